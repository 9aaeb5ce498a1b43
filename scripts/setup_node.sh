#!/usr/bin/env bash
# Node.js and the npm packages of clients/node, which tests/test_node_client.py runs against a
# real admitd: Node.js from scripts/setup_system.sh, then `npm ci` when clients/node/node_modules
# is missing or was installed from another package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_system.sh  # Node.js and npm (with the other system packages)
lock=clients/node/package-lock.json
stamp=clients/node/node_modules/.admitd-package-lock.sha256  # the lock node_modules came from
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "npm ci --prefix clients/node (node_modules missing or older than $lock)" >&2
  npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi
