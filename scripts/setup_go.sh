#!/usr/bin/env bash
# Go and grpc-go from Debian, for the bench's independent load generator (bench/loadgen/,
# built by `python -m bench.run` on first use in GOPATH mode, no module downloads). Installs
# golang-go and golang-google-grpc-dev with apt-get when missing and we are root; otherwise
# says what to install and fails, so the Go path is never silently skipped.
set -euo pipefail
grpc_src=/usr/share/gocode/src/google.golang.org/grpc
missing=()
command -v go >/dev/null || missing+=(golang-go)
[ -d "$grpc_src" ] || missing+=(golang-google-grpc-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
