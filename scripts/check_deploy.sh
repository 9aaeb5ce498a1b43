#!/usr/bin/env bash
# Deploy checks without a container engine: the Dockerfile and the Helm chart. CI runs this
# from scripts/check; by hand: bash scripts/check_deploy.sh (after scripts/install).
# scripts/check_image.sh builds and runs the image itself.
#   1. hadolint the Dockerfile; the image's admitd.yaml is admitd's embedded default.
#   2. Helm (pinned, cached in .cache/helm/: scripts/_helm.sh): lint --strict and template
#      every helm/admitd/ci/*-values.yaml; kubernetes-validate --strict every manifest;
#      admitd check-config the rendered admitd.yaml; the checksum rule (limits live,
#      restart-only settings roll the pods); values of a wrong type are refused.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
chart=helm/admitd
source scripts/_helm.sh
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS="1.25.0 1.37.0"

step() { printf '== %s\n' "$*"; }
fail() {
  echo "check_deploy: FAIL: $*" >&2
  exit 1
}

if ! command -v hadolint >/dev/null && [ -x .venv/bin/hadolint ]; then
  export PATH="$root/.venv/bin:$PATH"
fi
for tool in hadolint kubernetes-validate admitd python3 npm; do
  command -v "$tool" >/dev/null ||
    fail "$tool not found (run scripts/install first)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/admitd-deploy.XXXXXX")
trap 'rm -rf "$work" "$helm_home"' EXIT

# -- 1. Dockerfile ------------------------------------------------------------------------------
step "hadolint Dockerfile"
hadolint Dockerfile
step "docker/admitd.yaml is the embedded default"
env -u ADMITD_REDIS_URL -u ADMITD_REDIS_PASSWORD python3 - <<'PY'
from admitd import EMBEDDED_DEFAULT, load_config

assert load_config("docker/admitd.yaml") == EMBEDDED_DEFAULT, "docker/admitd.yaml differs"
PY

# -- 2. Helm chart ------------------------------------------------------------------------------
helm=$(helm_path) || fail "Helm"
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
           "shutdown_grace", "event_loop"}
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

step "deploy checks passed"
