#!/usr/bin/env bash
# The image's install, in the two steps the Dockerfile runs (so the locked dependencies are a
# layer of their own, rebuilt only when the lock changes):
#
#   docker/install.sh deps PREFIX LOCK
#     A virtualenv at PREFIX with exactly the lock (requirements/runtime.txt, written by
#     scripts/lock: the versions the tests ran with): every file checked against its sha256,
#     wheels only, so nothing is compiled.
#   docker/install.sh app PREFIX ENCODINGS_DIR SOURCE
#     admitd from SOURCE (built by the locked setuptools), pip check, tiktoken's encoding files
#     baked into ENCODINGS_DIR (point TIKTOKEN_CACHE_DIR at it), then pip and setuptools
#     removed from the virtualenv: the image installs nothing at run time.
#
# Environment:
#   PYTHON                 interpreter for the virtualenv (default: python3)
#   ADMITD_ENCODINGS       encodings to bake (default: "o200k_base cl100k_base")
#   ADMITD_TIKTOKEN_SEED   a folder (relative: to SOURCE) already holding the encoding files
#                          under tiktoken's cache names (sha1 of the download URL), read instead
#                          of downloading, for machines that cannot reach
#                          openaipublic.blob.core.windows.net. Either way every file is
#                          checked against the sha256 that tiktoken itself pins.
# pip and the download trust the system's CA bundle when there is one (the build may mount
# one as a secret, for networks that intercept TLS), not their own copies.
set -euo pipefail

usage() {
  sed -n '5,12p' "$0" >&2
  exit 2
}
[ $# -ge 1 ] || usage
step=$1
shift
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  export PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
pip() { "$prefix/bin/python" -m pip --quiet --disable-pip-version-check --no-input "$@"; }

if [ "$step" = deps ]; then
  [ $# -eq 2 ] || usage
  prefix=$1
  "${PYTHON:-python3}" -m venv "$prefix"
  # --no-deps: the lock is the whole closure; pip check proves it in the app step.
  pip install --require-hashes --no-deps --only-binary :all: -r "$2"
  exit 0
fi
if [ "$step" != app ] || [ $# -ne 3 ]; then usage; fi
prefix=$1
encodings_dir=$2
source_dir=$3
read -r -a encodings <<<"${ADMITD_ENCODINGS:-o200k_base cl100k_base}"
seed=${ADMITD_TIKTOKEN_SEED:-}
if [ -n "$seed" ] && [ "${seed#/}" = "$seed" ]; then seed=$source_dir/$seed; fi
if [ -n "$seed" ] && [ ! -d "$seed" ]; then
  echo "install.sh: ADMITD_TIKTOKEN_SEED: no folder $seed" >&2
  exit 1
fi

pip install --no-deps --no-build-isolation "$source_dir"
pip check

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
# The installers go last: nothing in the image installs or builds anything.
pip uninstall --yes pip setuptools
