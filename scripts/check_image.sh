#!/usr/bin/env bash
# The image, built from the Dockerfile and run as a user would. scripts/test runs it last; by
# hand: bash scripts/check_image.sh (after scripts/install). The commands are the README's.
#   1. A Docker engine that builds with BuildKit: the one answering; else, as root, Debian's
#      docker.io installed with apt-get and dockerd started (and left running, its log in
#      /var/log/admitd-dockerd.log). Where none can be had the check says how to get one and
#      skips, except under CI=true, where that fails.
#   2. The base, PYTHON_IMAGE: the Dockerfile's pinned python image when it is here or a
#      registry answers; else docker/debian-python.sh builds one from Debian packages. Redis:
#      Debian's redis-server on that same base.
#   3. docker build: offline with tiktoken's encodings from the seed folder when there is one
#      (ADMITD_TIKTOKEN_SEED, else TIKTOKEN_CACHE_DIR), the host's CA bundle as a build secret.
#   4. scripts/check_image.py runs it: alone, then as an HA pair on Redis as the Helm chart runs
#      it; prints the image's size and its time to SERVING.
# Kept between runs on one machine: the base and Redis images (tagged by their recipe) and
# BuildKit's cache (layers, pip's downloads); this run's own image tag is removed at the end.
source "$(dirname "$0")/_env.sh"
source scripts/_helm.sh

say() { echo "check_image: $*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
cannot() { # no engine to be had here: CI fails, elsewhere the check is skipped, loudly
  [ "${CI:-}" != true ] || fail "$*"
  say "SKIPPED: $*"
  say "to run it: a Docker engine with BuildKit (Debian, as root: apt-get install docker.io," \
    "then dockerd &), then bash scripts/check_image.sh"
  exit 0
}
root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
  say "apt-get install $*"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}
timed() { # timed WHAT: how long since the last timed
  say "$1: $((SECONDS - mark)) s"
  mark=$SECONDS
}
mark=$SECONDS
started=$SECONDS

# -- 1. The engine ------------------------------------------------------------------------------
# Docker 23+ builds with BuildKit through buildx; Debian's docker.io (20.10) through its own
# client with DOCKER_BUILDKIT=1. A newer client without buildx falls back to the legacy
# builder, which has no RUN --mount: then Debian's client is the one to use.
buildkit_client() {
  local client major
  for client in $(type -ap docker) /usr/bin/docker; do
    [ -x "$client" ] || continue
    if "$client" buildx version >/dev/null 2>&1; then echo "$client" && return; fi
    major=$("$client" --version 2>/dev/null | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')
    if [ -n "$major" ] && [ "$major" -lt 23 ]; then echo "$client" && return; fi
  done
  return 1
}
if ! docker=$(buildkit_client); then
  root || cannot "no Docker client that builds with BuildKit (docker buildx, or Docker 20.10)"
  apt_install docker.io
  docker=$(buildkit_client) || fail "no BuildKit-capable docker client after apt-get install"
fi
export DOCKER=$docker DOCKER_BUILDKIT=1
if ! timeout 20 "$docker" info >/dev/null 2>&1; then
  { root && command -v dockerd >/dev/null; } || cannot "no Docker engine answers, and starting dockerd needs root"
  say "starting dockerd (log: /var/log/admitd-dockerd.log)"
  # Its own session, standard streams closed: it outlives this run for the next one.
  setsid dockerd >>/var/log/admitd-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do
    timeout 5 "$docker" info >/dev/null 2>&1 && break
    sleep 1
  done
  timeout 20 "$docker" info >/dev/null 2>&1 || {
    tail -20 /var/log/admitd-dockerd.log >&2
    fail "dockerd did not answer within a minute"
  }
fi
timed "engine ($("$docker" version --format '{{.Server.Version}}'), client $docker)"

# -- 2. The bases -------------------------------------------------------------------------------
pinned=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
if "$docker" image inspect "$pinned" >/dev/null 2>&1 ||
  timeout 300 "$docker" pull --quiet "$pinned" >/dev/null 2>&1; then
  python_image=$pinned
else
  say "no registry answers for $pinned: the base comes from Debian packages"
  command -v debootstrap >/dev/null || { root && apt_install debootstrap; } ||
    cannot "debootstrap is missing (Debian: apt-get install debootstrap)"
  python_image=$(bash docker/debian-python.sh)
fi
# Redis for the HA pair: Debian's redis-server on the same base, tagged by base and recipe.
redis_recipe=$(printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends redis-server\n' \
  "$python_image")
redis_image=local/admitd-redis:$(printf '%s\n%s' "$redis_recipe" \
  "$("$docker" image inspect --format '{{.Id}}' "$python_image")" | sha256sum | cut -c1-12)
if ! "$docker" image inspect "$redis_image" >/dev/null 2>&1; then
  echo "$redis_recipe" | "$docker" build --quiet --tag "$redis_image" - >/dev/null
fi
timed "bases ($python_image, $redis_image)"

# -- 3. The build -------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/admitd-image.XXXXXX")
image=admitd-check:$(date +%s)-$$ # this run's own tag: other worktrees may build at once
cleanup() {
  "$docker" rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$work" "$helm_home"
}
trap cleanup EXIT
build=(--build-arg "PYTHON_IMAGE=$python_image")
seed=${ADMITD_TIKTOKEN_SEED:-${TIKTOKEN_CACHE_DIR:-}}
if [ -n "$seed" ]; then # the build context holds it: .dockerignore lets .cache/tiktoken-seed in
  rm -rf .cache/tiktoken-seed
  mkdir -p .cache/tiktoken-seed
  find "$seed" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' \
    -exec cp {} .cache/tiktoken-seed/ \;
  build+=(--build-arg ADMITD_TIKTOKEN_SEED=.cache/tiktoken-seed)
fi
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  build+=(--secret "id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt")
fi
say "docker build ${build[*]} --tag $image ."
"$docker" build --progress=plain "${build[@]}" --tag "$image" . >"$work/build.log" 2>&1 ||
  { tail -60 "$work/build.log" >&2; fail "docker build"; }
grep -o 'baked encodings: .*' "$work/build.log" | head -1 >&2 || true
timed "docker build"

# -- 4. Run it ----------------------------------------------------------------------------------
helm=$(helm_path) || fail "Helm"
"$helm" template admitd helm/admitd --namespace admitd >"$work/default.yaml"
"$helm" template admitd helm/admitd --namespace admitd -f helm/admitd/ci/image-values.yaml \
  >"$work/pair.yaml"
python scripts/check_image.py --image "$image" --redis-image "$redis_image" \
  --default-chart "$work/default.yaml" --pair-chart "$work/pair.yaml"
timed "runs"
say "passed in $((SECONDS - started)) s"
