#!/usr/bin/env bash
# The system packages the tests and the bench need beyond Python, installed in one apt-get run
# when missing and we are root; otherwise says what to install and fails, so no test is ever
# silently skipped:
#   redis-server                     the Redis tests start their own instances on free ports
#   nodejs, npm                      the Node client's tests (scripts/setup_node.sh: npm ci)
#   golang-go, golang-google-grpc-dev  the bench's load generator (bench/loadgen/, GOPATH mode)
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v go >/dev/null || missing+=(golang-go)
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || missing+=(golang-google-grpc-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing system packages: ${missing[*]} (Debian: sudo apt-get install ${missing[*]};" \
    "or Node.js 18+ from https://nodejs.org and Go from https://go.dev)" >&2
  exit 1
fi
