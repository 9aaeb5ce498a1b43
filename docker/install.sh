#!/usr/bin/env bash
# Install admitd into a fresh virtualenv and bake tiktoken's encoding files next to it, so the
# result runs offline. The Dockerfile runs exactly this script, and so does
# scripts/check_deploy.sh (into a temporary folder), because Docker cannot build on the CI
# machines: what CI proves about this script is what the image gets.
#
#   docker/install.sh PREFIX ENCODINGS_DIR [SOURCE]
#     PREFIX         virtualenv to create, e.g. /opt/admitd/venv
#     ENCODINGS_DIR  folder to bake the encodings into; point TIKTOKEN_CACHE_DIR at it
#     SOURCE         admitd source tree (default: the repository holding this script)
#
# Environment:
#   PYTHON                 interpreter for the virtualenv (default: python3)
#   ADMITD_ENCODINGS       encodings to bake (default: "o200k_base cl100k_base")
#   ADMITD_TIKTOKEN_SEED   a folder already holding encoding files under tiktoken's cache names
#                          (sha1 of the download URL), used instead of downloading, for
#                          machines without access to openaipublic.blob.core.windows.net.
#                          The image build leaves it unset and downloads. Either way every
#                          file is checked against the sha256 that tiktoken itself pins.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  sed -n '7,11p' "$0" >&2
  exit 2
fi
prefix=$1
encodings_dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=${3:-$(dirname "$here")}
python=${PYTHON:-python3}
read -r -a encodings <<<"${ADMITD_ENCODINGS:-o200k_base cl100k_base}"
seed=${ADMITD_TIKTOKEN_SEED:-}

"$python" -m venv "$prefix"
# Exactly the lock: every distribution pinned and checked against its sha256
# (requirements/runtime.txt, written by scripts/lock: the versions the tests ran with), wheels
# only, so nothing is compiled. --no-deps because the lock is the whole closure; pip check
# proves it. admitd itself is built by the locked setuptools.
pip=("$prefix/bin/python" -m pip --quiet --disable-pip-version-check --no-input)
"${pip[@]}" install --require-hashes --no-deps --only-binary :all: \
  -r "$source_dir/requirements/runtime.txt"
"${pip[@]}" install --no-deps --no-build-isolation "$source_dir"
"${pip[@]}" check

mkdir -p "$encodings_dir"
# tiktoken fetches through tiktoken.load.read_file and caches the bytes under
# sha1(url) in TIKTOKEN_CACHE_DIR after checking their sha256; only the fetch is replaced
# here (by a read from the seed folder), so the hash check and the cache layout stay
# tiktoken's own.
TIKTOKEN_CACHE_DIR="$encodings_dir" "$prefix/bin/python" - "$seed" "${encodings[@]}" <<'PY'
import hashlib
import os
import sys

import tiktoken
import tiktoken.load

seed, names = sys.argv[1], sys.argv[2:]
fetch = tiktoken.load.read_file


def read_file(blobpath: str) -> bytes:
    if seed:
        path = os.path.join(seed, hashlib.sha1(blobpath.encode()).hexdigest())
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
    return fetch(blobpath)


tiktoken.load.read_file = read_file
for name in names:
    tiktoken.get_encoding(name)
PY

# Prove the folder is enough on its own: a new process whose every fetch fails.
TIKTOKEN_CACHE_DIR="$encodings_dir" "$prefix/bin/python" - "${encodings[@]}" <<'PY'
import sys

import tiktoken
import tiktoken.load


def offline(blobpath: str) -> bytes:
    raise RuntimeError(f"encoding not baked: {blobpath} would be downloaded")


tiktoken.load.read_file = offline
for name in sys.argv[1:]:
    assert tiktoken.get_encoding(name).encode("admitd"), name
print("baked encodings:", " ".join(sys.argv[1:]))
PY
chmod -R a+rX "$encodings_dir"
