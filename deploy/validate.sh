#!/usr/bin/env bash
# Validates deploy/kubernetes/*.yaml offline against the Kubernetes OpenAPI
# schemas bundled in the `kubernetes-validate` PyPI package (no cluster, no
# network once the package is installed), then extracts gateway.toml from the
# ConfigMap so CI can run `authgate check --config <path>` on it.
#
# Usage: deploy/validate.sh
# Env:   AUTHGATE_K8S_VERSIONS  space-separated Kubernetes versions to validate
#                               against; "latest" = the package's default
#                               (default: "1.30.0 latest")
#        TMPDIR                 where the venv and the extracted file go
#
# Exit status: 0 when every manifest is valid, non-zero otherwise.
# Last line on success: GATEWAY_TOML=<path to the extracted gateway.toml>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifests="$here/kubernetes"
tmp="${TMPDIR:-/tmp}"
venv="$tmp/authgate-kv-venv"
versions="${AUTHGATE_K8S_VERSIONS:-1.30.0 latest}"

# --- tool -----------------------------------------------------------------
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  echo "installing kubernetes-validate into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet kubernetes-validate
fi
py="$venv/bin/python3"
kv="$venv/bin/kubernetes-validate"
echo "using kubernetes-validate $("$kv" --version 2>&1 | head -n1)"

# --- schema validation ----------------------------------------------------
shopt -s nullglob
files=()
for f in "$manifests"/*.yaml "$manifests"/*.yml; do
  [[ "$(basename "$f")" == kustomization.y*ml ]] && continue
  files+=("$f")
done
if (( ${#files[@]} == 0 )); then
  echo "no manifests found in $manifests" >&2
  exit 1
fi

failed=0
for v in $versions; do
  kargs=(--strict)
  [[ "$v" != latest ]] && kargs+=(-k "$v")
  for f in "${files[@]}"; do
    # kubernetes-validate exits non-zero on a schema error or unparsable YAML
    # and checks every document of a multi-document file.
    if ! "$kv" "${kargs[@]}" "$f"; then
      echo "FAIL: $(basename "$f") (kubernetes ${v})" >&2
      failed=1
    fi
  done
done

# --- kustomization.yaml: YAML syntax + every resource exists --------------
# (no schema for it in kubernetes-validate; kustomize itself is not installed)
if ! "$py" - "$manifests/kustomization.yaml" <<'PY'
import os, sys, yaml
path = sys.argv[1]
with open(path) as fh:
    doc = yaml.safe_load(fh)
if not isinstance(doc, dict) or doc.get("kind") != "Kustomization":
    sys.exit(f"{path}: not a Kustomization")
base = os.path.dirname(path)
missing = [r for r in doc.get("resources", []) if not os.path.exists(os.path.join(base, r))]
if missing:
    sys.exit(f"{path}: resources not found: {missing}")
print(f"INFO kustomization.yaml parsed; resources: {', '.join(doc.get('resources', []))}")
PY
then
  echo "FAIL: kustomization.yaml" >&2
  failed=1
fi

if (( failed )); then
  echo "manifest validation FAILED" >&2
  exit 1
fi

# --- gateway.toml ---------------------------------------------------------
# Extract it, check it is TOML, and check terminationGracePeriodSeconds leaves
# room for the preStop sleep plus shutdown_grace. Semantic validation is
# `authgate check`'s job (not run here).
out="$(mktemp "$tmp/authgate-gateway.XXXXXX")"
mv "$out" "$out.toml"
out="$out.toml"
"$py" - "$manifests/configmap.yaml" "$manifests/deployment.yaml" "$out" <<'PY'
import re, sys, yaml
cm_path, dep_path, out = sys.argv[1:4]

cms = [d for d in yaml.safe_load_all(open(cm_path)) if d and d.get("kind") == "ConfigMap"]
text = next((d.get("data", {}).get("gateway.toml") for d in cms
             if d["metadata"]["name"] == "authgate-config"), None)
if not text:
    sys.exit(f"{cm_path}: ConfigMap authgate-config has no data.gateway.toml")
with open(out, "w") as fh:
    fh.write(text)

try:
    import tomllib  # Python >= 3.11
except ImportError:
    tomllib = None
    print("WARN tomllib unavailable (Python < 3.11): TOML syntax not checked", file=sys.stderr)
if tomllib:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"gateway.toml in {cm_path}: {e}")

    def seconds(s):
        m = re.fullmatch(r"(\d+)(ms|s|m|h)", s)
        if not m:
            sys.exit(f"gateway.toml: cannot parse duration {s!r}")
        return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]

    grace = seconds(cfg.get("limits", {}).get("shutdown_grace", "30s"))
    dep = next(d for d in yaml.safe_load_all(open(dep_path)) if d and d.get("kind") == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    pre = max([c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
               for c in pod["containers"]] or [0])
    if not tgps > pre + grace:
        sys.exit(f"terminationGracePeriodSeconds={tgps} must exceed preStop sleep {pre}s "
                 f"+ shutdown_grace {grace:g}s")
    print(f"INFO gateway.toml is valid TOML; terminationGracePeriodSeconds={tgps} "
          f"> preStop {pre}s + shutdown_grace {grace:g}s")
PY

echo "all manifests valid"
echo "GATEWAY_TOML=$out"
