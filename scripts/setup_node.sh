#!/usr/bin/env bash
# Node.js and the npm packages of clients/node, which tests/test_node_client.py runs against a
# real admitd. Installs Debian's nodejs and npm with apt-get when node is missing and we are
# root (otherwise says what to install and fails, so the test is never silently skipped),
# then runs `npm ci` when clients/node/node_modules is missing or was installed from another
# package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]} (Debian: sudo apt-get install ${missing[*]}; or Node.js 18+" \
      "from https://nodejs.org)" >&2
    exit 1
  fi
fi
lock=clients/node/package-lock.json
stamp=clients/node/node_modules/.admitd-package-lock.sha256  # the lock node_modules came from
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "npm ci --prefix clients/node (node_modules missing or older than $lock)" >&2
  npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi
