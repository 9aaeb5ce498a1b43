// Command loadgen is the bench's independent load generator: Acquire+Release pairs against
// admitd replicas (or the no-op echo server, which answers the same RPCs) from grpc-go,
// closed loop (a fixed number of callers, each starting its next pair when the last ends) or
// open loop (pairs started at a fixed rate, whatever the server does).
//
// It needs no generated code: the harness hands it the encoded requests (a list of Acquire
// requests, one drawn at random per pair; a Release request without its lease id, which is
// read from each Lease and put in front), and the field numbers of the lease id.
//
//	loadgen SPEC.json > RESULT.json
//
// The result counts what completed inside the measured window (after the warm-up), with the
// CPU time this process and the processes named in cpu_pids used over that same window, and
// every failed RPC by gRPC code (and, for RESOURCE_EXHAUSTED, by ErrorInfo reason).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
)

type spec struct {
	Targets        []string       `json:"targets"`
	Connections    int            `json:"connections"`     // HTTP/2 connections per target
	Concurrency    int            `json:"concurrency"`     // closed loop: callers
	Rate           float64        `json:"rate"`            // > 0: open loop, pairs started per second
	MaxOutstanding int            `json:"max_outstanding"` // open loop: pairs in flight at most
	Duration       float64        `json:"duration"`        // measured window, seconds
	Warmup         float64        `json:"warmup"`          // seconds before the window opens
	Timeout        float64        `json:"timeout"`         // deadline of each RPC, seconds
	ErrorPause     float64        `json:"error_pause"`     // closed loop: pause after a failed RPC
	Acquire        [][]byte       `json:"acquire"`         // encoded AcquireRequests (base64)
	Reject         [][]byte       `json:"reject"`          // optional fail-fast Acquire timed after each pair
	ReleaseTail    []byte         `json:"release_tail"`    // encoded ReleaseRequest without lease id
	LeaseField     uint64         `json:"lease_id_field"`  // lease id's field number in Lease
	ReleaseField   uint64         `json:"release_lease_id_field"`
	AcquireMethod  string         `json:"acquire_method"`
	ReleaseMethod  string         `json:"release_method"`
	CPUPids        map[string]int `json:"cpu_pids"`    // processes whose CPU time is measured
	ClockTicks     float64        `json:"clock_ticks"` // sysconf(_SC_CLK_TCK), for /proc
	Seed           int64          `json:"seed"`
}

// tally is what one caller (closed loop) or all pairs (open loop) recorded in the window.
type tally struct {
	pairs, acquires, rejects []time.Duration
	errors                   map[string]map[string]int // RPC -> code -> count
	refusals                 map[string]int            // RESOURCE_EXHAUSTED reason -> count
	explained                int                       // refusals with a reason and a RetryInfo
}

func newTally() *tally {
	return &tally{errors: map[string]map[string]int{}, refusals: map[string]int{}}
}

func (t *tally) fail(rpc string, err error) {
	code, reason, retryInfo := outcome(err)
	if t.errors[rpc] == nil {
		t.errors[rpc] = map[string]int{}
	}
	t.errors[rpc][code]++
	if code == "RESOURCE_EXHAUSTED" {
		if reason != "" && retryInfo {
			t.explained++
		}
		if reason == "" {
			reason = "(none)"
		}
		t.refusals[reason]++
	}
}

func (t *tally) merge(o *tally) {
	t.pairs = append(t.pairs, o.pairs...)
	t.acquires = append(t.acquires, o.acquires...)
	t.rejects = append(t.rejects, o.rejects...)
	for rpc, codes := range o.errors {
		for code, n := range codes {
			if t.errors[rpc] == nil {
				t.errors[rpc] = map[string]int{}
			}
			t.errors[rpc][code] += n
		}
	}
	for reason, n := range o.refusals {
		t.refusals[reason] += n
	}
	t.explained += o.explained
}

type runner struct {
	spec    spec
	conns   []*grpc.ClientConn
	timeout time.Duration
	opened  time.Time // the measured window [opened, closed)
	closed  time.Time
}

func (r *runner) inWindow(t time.Time) bool { return !t.Before(r.opened) && t.Before(r.closed) }

func (r *runner) call(conn *grpc.ClientConn, method string, request []byte, response *[]byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	return conn.Invoke(ctx, method, &request, response, grpc.ForceCodec(rawCodec{}))
}

// pair runs Acquire then Release (then the fail-fast probe, if any), from `start`. `counted`
// says whether what happens at a given moment is recorded. It reports whether both succeeded.
func (r *runner) pair(conn *grpc.ClientConn, rng *rand.Rand, t *tally, start time.Time,
	counted func(time.Time) bool) bool {
	var lease, released []byte
	acquire := r.spec.Acquire[rng.Intn(len(r.spec.Acquire))]
	if err := r.call(conn, r.spec.AcquireMethod, acquire, &lease); err != nil {
		if counted(time.Now()) {
			t.fail("Acquire", err)
		}
		return false
	}
	granted := time.Now()
	id, err := stringField(lease, r.spec.LeaseField)
	if err != nil {
		panic(fmt.Sprintf("no lease id in the Acquire response: %v", err))
	}
	release := withString(r.spec.ReleaseField, id, r.spec.ReleaseTail)
	if err := r.call(conn, r.spec.ReleaseMethod, release, &released); err != nil {
		if counted(time.Now()) {
			t.fail("Release", err)
		}
		return false
	}
	done := time.Now()
	if counted(done) {
		t.pairs = append(t.pairs, done.Sub(start))
		t.acquires = append(t.acquires, granted.Sub(start))
	}
	if len(r.spec.Reject) > 0 {
		probe := r.spec.Reject[rng.Intn(len(r.spec.Reject))]
		began := time.Now()
		err := r.call(conn, r.spec.AcquireMethod, probe, &lease)
		ended := time.Now()
		if counted(ended) {
			if err == nil || codeName(grpcCode(err)) != "RESOURCE_EXHAUSTED" {
				t.fail("Acquire (fail-fast probe)", errOrGranted(err))
			} else {
				t.rejects = append(t.rejects, ended.Sub(began))
			}
		}
	}
	return true
}

// closedLoop runs `concurrency` callers until the window closes.
func (r *runner) closedLoop() *tally {
	total := newTally()
	var mu sync.Mutex
	var wg sync.WaitGroup
	pause := time.Duration(r.spec.ErrorPause * float64(time.Second))
	for i := 0; i < r.spec.Concurrency; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn := r.conns[i%len(r.conns)]
			rng := rand.New(rand.NewSource(r.spec.Seed*1000003 + int64(i)))
			t := newTally()
			for time.Now().Before(r.closed) {
				if !r.pair(conn, rng, t, time.Now(), r.inWindow) && pause > 0 {
					time.Sleep(pause)
				}
			}
			mu.Lock()
			total.merge(t)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	return total
}

// openLoop starts pairs at `rate` per second until the window closes; a pair counts when it
// was started inside the window, and latency runs from when it was due, so a server that
// falls behind is charged for the wait. Pairs beyond max_outstanding are not started
// (counted as skipped: the generator's limit, not the server's answer).
func (r *runner) openLoop(start time.Time) (*tally, int, int) {
	total := newTally()
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, r.spec.MaxOutstanding)
	interval := time.Duration(float64(time.Second) / r.spec.Rate)
	started, skipped := 0, 0
	for k := 0; ; k++ {
		due := start.Add(time.Duration(k) * interval)
		if !due.Before(r.closed) {
			break
		}
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		counted := r.inWindow(due)
		select {
		case slots <- struct{}{}:
		default:
			if counted {
				skipped++
			}
			continue
		}
		if counted {
			started++
		}
		wg.Add(1)
		go func(k int, due time.Time, counted bool) {
			defer func() { <-slots; wg.Done() }()
			rng := rand.New(rand.NewSource(r.spec.Seed*1000003 + int64(k)))
			t := newTally()
			r.pair(r.conns[k%len(r.conns)], rng, t, due, func(time.Time) bool { return counted })
			mu.Lock()
			total.merge(t)
			mu.Unlock()
		}(k, due, counted)
	}
	wg.Wait()
	return total, started, skipped
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen SPEC.json > RESULT.json")
		os.Exit(2)
	}
	raw, err := ioutil.ReadFile(os.Args[1])
	check(err)
	r := &runner{spec: spec{Connections: 1, Timeout: 10, ErrorPause: 0.01, MaxOutstanding: 10000,
		ClockTicks: 100, LeaseField: 1, ReleaseField: 1,
		AcquireMethod: "/admitd.v1.Admission/Acquire", ReleaseMethod: "/admitd.v1.Admission/Release"}}
	check(json.Unmarshal(raw, &r.spec))
	if len(r.spec.Targets) == 0 || len(r.spec.Acquire) == 0 {
		check(fmt.Errorf("the spec needs targets and acquire requests"))
	}
	r.timeout = time.Duration(r.spec.Timeout * float64(time.Second))
	// Connections interleave the targets, so caller i talks to target i mod len(targets).
	for c := 0; c < r.spec.Connections; c++ {
		for _, target := range r.spec.Targets {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
			cancel()
			check(err)
			defer conn.Close()
			r.conns = append(r.conns, conn)
		}
	}
	start := time.Now()
	r.opened = start.Add(time.Duration(r.spec.Warmup * float64(time.Second)))
	r.closed = r.opened.Add(time.Duration(r.spec.Duration * float64(time.Second)))
	// CPU is sampled at the window's edges by a timer of its own, whatever the callers do.
	samples := make(chan map[string]float64, 2)
	sampledAt := make(chan time.Time, 2)
	go func() {
		for _, edge := range []time.Time{r.opened, r.closed} {
			time.Sleep(time.Until(edge))
			sampledAt <- time.Now()
			samples <- cpuSample(r.spec.CPUPids, r.spec.ClockTicks)
		}
	}()
	result := map[string]interface{}{
		"generator": "go", "go_version": runtime.Version(), "gomaxprocs": runtime.GOMAXPROCS(0),
	}
	var t *tally
	if r.spec.Rate > 0 {
		var started, skipped int
		t, started, skipped = r.openLoop(start)
		result["mode"], result["offered_per_s"] = "open", r.spec.Rate
		result["started"], result["skipped"] = started, skipped
	} else {
		t = r.closedLoop()
		result["mode"], result["concurrency"] = "closed", r.spec.Concurrency
	}
	t0, before := <-sampledAt, <-samples
	t1, after := <-sampledAt, <-samples
	elapsed := t1.Sub(t0).Seconds()
	done := len(t.pairs)
	perPair, share := map[string]interface{}{}, map[string]interface{}{}
	for name, value := range after {
		perPair[name], share[name] = nil, nil
		if value >= 0 && before[name] >= 0 {
			share[name] = (value - before[name]) / elapsed
			if done > 0 {
				perPair[name] = (value - before[name]) / float64(done) * 1e6
			}
		}
	}
	errors := map[string]int{}
	for _, codes := range t.errors {
		for code, n := range codes {
			errors[code] += n
		}
	}
	sortDurations(t.pairs)
	sortDurations(t.acquires)
	sortDurations(t.rejects)
	for key, value := range map[string]interface{}{
		"pairs": done, "elapsed": elapsed,
		"pairs_per_s": float64(done) / elapsed, "rpc_per_s": 2 * float64(done) / elapsed,
		"pair_p50_ms": percentileMs(t.pairs, 50), "pair_p99_ms": percentileMs(t.pairs, 99),
		"acquire_p50_ms": percentileMs(t.acquires, 50), "acquire_p99_ms": percentileMs(t.acquires, 99),
		"reject_p50_ms": percentileMs(t.rejects, 50), "reject_p99_ms": percentileMs(t.rejects, 99),
		"cpu_us_per_pair": perPair, "cpu_cores": share,
		"errors": errors, "errors_by_rpc": t.errors,
		"refusals": t.refusals, "refusals_explained": t.explained,
	} {
		result[key] = value
	}
	check(json.NewEncoder(os.Stdout).Encode(result))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
