#!/usr/bin/env bash
# Checks the deployment files (deploy/): the Dockerfile with hadolint, the Kubernetes manifests
# with kubernetes-validate (and the ConfigMap's portal.toml with `radius-portal check-config`),
# the systemd unit with `systemd-analyze verify` (any message about it fails) and `systemd-analyze
# security` (exposure at most 2.0). Needs `scripts/setup.sh --test` and a built
# target/debug/radius-portal.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/deploy-tools/bin
portal=target/debug/radius-portal
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "hadolint deploy/Dockerfile"
"$tools/hadolint" deploy/Dockerfile

echo "kubernetes-validate deploy/kubernetes/*.yaml deploy/kubernetes/optional/*.yaml"
"$tools/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml deploy/kubernetes/optional/*.yaml

echo "check-config: the ConfigMap's portal.toml"
"$tools/python" - "$tmp" <<'PY'
import sys, yaml
tmp = sys.argv[1]
config = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["portal.toml"]
open(f"{tmp}/radius-secret", "w").write("a-secret-for-the-check\n")
open(f"{tmp}/portal.toml", "w").write(config.replace("/run/secrets/portal/", f"{tmp}/"))
PY
"$portal" --config "$tmp/portal.toml" check-config >/dev/null

echo "systemd-analyze: deploy/systemd/radius-portal.service"
unit="$tmp/radius-portal.service"
# The unit names the installed binary; verify it against the built one.
sed "s|/usr/lib/radius-portal/radius-portal|$PWD/$portal|g" deploy/systemd/radius-portal.service >"$unit"
out=$(systemd-analyze verify "$unit" 2>&1 || true)
if grep -F "radius-portal.service" <<<"$out"; then
  echo "systemd-analyze verify found problems in the unit" >&2
  exit 1
fi
systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1
echo "deployment files OK"
