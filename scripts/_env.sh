# shellcheck shell=bash
# Sourced by scripts/check, scripts/test and scripts/serve: run from the repository root, with
# .venv's tools first on PATH (scripts/install makes .venv), and tiktoken's encoding files
# from the seed folder beside the repository when there is one, for machines that cannot
# download them (tests/conftest.py does the same for a bare pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d "$PWD/../shared/tiktoken-cache" ]; then
  export TIKTOKEN_CACHE_DIR="$PWD/../shared/tiktoken-cache"
fi
