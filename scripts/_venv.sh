# Sourced by scripts/serve and scripts/test: create .venv once and install the project into it.
# $1: the pip extras to install, e.g. "" or "[dev]".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:-}"
if [[ "${1:-}" == *dev* ]]; then
  # The Python client (clients/python) is type-checked and tested with the server.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e clients/python
fi
export PATH="$PWD/.venv/bin:$PATH"
