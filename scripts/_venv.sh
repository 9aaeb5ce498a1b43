# Sourced by scripts/serve and scripts/test: create .venv once and install the project into it.
# $1: the pip extras to install, e.g. "" or "[dev]".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:-}"
export PATH="$PWD/.venv/bin:$PATH"
