package main

// CPU time of this process and of the processes under test, and latency percentiles.

import (
	"io/ioutil"
	"math"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ownCPU is this process's user + system CPU time in seconds.
func ownCPU() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return -1
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

// processCPU is a process's user + system CPU time (all its threads) in seconds, from
// /proc/PID/stat; -1 when it cannot be read.
func processCPU(pid int, clockTicks float64) float64 {
	data, err := ioutil.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	text := string(data)
	// The command name (field 2) may hold spaces: count fields after its closing ")".
	fields := strings.Fields(text[strings.LastIndexByte(text, ')')+1:])
	if len(fields) < 13 {
		return -1
	}
	user, err1 := strconv.ParseFloat(fields[11], 64)
	system, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (user + system) / clockTicks
}

// cpuSample is the CPU seconds of this process ("load") and of every watched process.
func cpuSample(pids map[string]int, clockTicks float64) map[string]float64 {
	out := map[string]float64{"load": ownCPU()}
	for name, pid := range pids {
		out[name] = processCPU(pid, clockTicks)
	}
	return out
}

// percentileMs is the nearest-rank percentile q of latencies, in milliseconds (nil: none).
func percentileMs(sorted []time.Duration, q float64) interface{} {
	if len(sorted) == 0 {
		return nil
	}
	rank := int(math.Ceil(float64(len(sorted)) * q / 100))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return float64(sorted[rank-1]) / 1e6
}

func sortDurations(d []time.Duration) []time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d
}
