#!/usr/bin/env bash
# System packages the test suite needs beyond Python: redis-server (the Redis tests start
# their own instances on free ports). Installs them with apt-get when missing and possible;
# otherwise says what to install and fails, so no test is ever silently skipped.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing system packages: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
