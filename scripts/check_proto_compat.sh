#!/usr/bin/env bash
# Breaking-change check of the contract: protos/ against protos/ of the last release, the
# newest v* tag reachable from HEAD (buf breaking, rules from buf.yaml: FILE). Until a v* tag
# exists there is nothing released to stay compatible with: it says so and passes.
#   scripts/check_proto_compat.sh            # compare with the last release
#   scripts/check_proto_compat.sh v0.2.0     # compare with a given tag
# CI clones shallowly without tags: `git fetch --tags --force` first, or the release is not
# found. buf comes from the dev tools (PyPI buf-bin, scripts/install).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null || true)}
if [ -z "$tag" ]; then
  echo "check_proto_compat: no release tag (v*) reachable from HEAD yet:" \
    "no released proto to compare against, nothing to check" >&2
  exit 0
fi
if ! git cat-file -e "$tag^{tree}:protos" 2>/dev/null; then
  echo "check_proto_compat: release $tag has no protos/ folder: nothing to compare against" >&2
  exit 0
fi
echo "check_proto_compat: protos/ against release $tag" >&2
buf breaking protos --against ".git#tag=$tag,subdir=protos"
echo "check_proto_compat: no breaking change since $tag" >&2
