#!/usr/bin/env bash
# Offline checks of the Parley Helm chart (helm/parley), for the Makefile and CI.
#
#   helm/check.sh           run every check; exits non-zero on the first failure
#   helm/check.sh readme    regenerate the parameter table of helm/parley/README.md
#
# Needs helm 3, kubernetes-validate and python3 (`make deploy-tools` installs
# them); no cluster and no network. What it checks, in order:
#   1. dashboards/ (a symlink to deploy/grafana/dashboards) resolves and every
#      dashboard is valid JSON;
#   2. values.yaml documents every key with `## @param`, and the README's
#      parameter table is exactly what those lines generate (stdlib python);
#   3. helm lint --strict with the default and the production values;
#   4. helm template of four scenarios (defaults; ci/production-values.yaml;
#      defaults with every optional object on; TLS with cert-manager) for
#      several Kubernetes versions, each validated by kubernetes-validate
#      --strict; the ServiceMonitor and the Certificates (CRDs, unknown to
#      kubernetes-validate) are set aside and checked on their own;
#   5. properties of the rendered objects (probes, replicas under HPA, PDBs,
#      preStop by version, CHAT_URL on the headless Service, secrets, ...);
#   6. values that must be refused: by values.schema.json, and by the rules
#      of templates/validate.yaml (e.g. GATEWAY_SEND_QUEUE > CHAT_MAX_REPLAY);
#   7. when the service binaries are built, that every variable the chart
#      sets is one the binary reads (`--help` lists them).
#
# Environment: KUBE_VERSIONS (space-separated, default below), PARLEY_BIN_DIR
# (where parley-auth etc. are; default target/debug, then
# /var/cache/parley/target/debug).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
chart="$here/parley"
# 1.27: oldest supported (chart kubeVersion); 1.29: last without the preStop
# sleep action; 1.30: sleep action on by default; 1.33; 1.34: sleep GA.
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.27.0 1.29.0 1.30.0 1.33.0 1.34.0"}
release=t
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok   %s\n' "$*"; }
die() { printf '   FAIL %s\n' "$*" >&2; exit 1; }

# helm prints a notice on stderr for every symlink it follows (dashboards/);
# keep it out of the output (synchronously, so callers read complete output).
helm_() {
  local rc=0
  helm "$@" 2>"$work/helm-stderr.txt" || rc=$?
  grep -v 'found symbolic link in path' "$work/helm-stderr.txt" >&2 || true
  return "$rc"
}

readme_tool() {
  python3 - "$1" "$chart/values.yaml" "$chart/README.md" <<'PY'
"""Checks that values.yaml documents every key with `## @param`, and
generates or checks the README parameter table from those lines.

values.yaml follows a YAML subset (see its header): a key has its value on
the same line (flow style) or opens a nested block; no block lists. That is
enough to list its keys with the standard library only."""
import re
import sys

mode, values_path, readme_path = sys.argv[1:4]
START, END = "<!-- parameters:start -->", "<!-- parameters:end -->"

key_re = re.compile(r"^( *)([A-Za-z0-9_]+):(?: (.*))?$")
param_re = re.compile(r"^\s*## @param (\S+) (.+)$")
section_re = re.compile(r"^\s*## @section (.+)$")

errors = []
leaves = {}         # path -> default text
containers = set()
params = []         # (section, path, description)
section = "Parameters"
stack = []          # (indent, key)
pending = None      # a container key waiting for its first child

lines = open(values_path, encoding="utf-8").read().splitlines()
for number, line in enumerate(lines, 1):
    m = section_re.match(line)
    if m:
        section = m.group(1).strip()
        continue
    m = param_re.match(line)
    if m:
        params.append((section, m.group(1), m.group(2).strip()))
        continue
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        continue
    if stripped.startswith("- "):
        errors.append(f"values.yaml:{number}: block lists are not allowed; use flow style [...]")
        continue
    m = key_re.match(line)
    if not m:
        errors.append(f"values.yaml:{number}: cannot read this line as `key: value`")
        continue
    indent, key, value = len(m.group(1)), m.group(2), m.group(3)
    if pending is not None:
        if indent <= pending[0]:
            errors.append(f"values.yaml: {pending[1]} has no value and no nested keys")
        pending = None
    while stack and stack[-1][0] >= indent:
        stack.pop()
    path = ".".join([k for _, k in stack] + [key])
    if value is None or value.strip() == "":
        containers.add(path)
        stack.append((indent, key))
        pending = (indent, path)
    else:
        if re.search(r"\s#", value) and not value.strip().startswith(("'", '"')):
            errors.append(f"values.yaml:{number}: no trailing comments (put them on their own line)")
        leaves[path] = value.strip()

seen = set()
for _, path, _ in params:
    if path in seen:
        errors.append(f"@param {path} appears twice")
    seen.add(path)
    if path in containers:
        errors.append(f"@param {path} documents a block; document its keys instead")
    elif path not in leaves:
        errors.append(f"@param {path} names no key of values.yaml")
for path in leaves:
    if path not in seen:
        errors.append(f"{path} has no `## @param {path} ...` line")


def cell(text):
    return text.replace("|", "\\|")


out = []
current = None
for sec, path, desc in params:
    if path not in leaves:
        continue
    if sec != current:
        if current is not None:
            out.append("")
        out += [f"### {sec}", "", "| Name | Description | Default |", "| --- | --- | --- |"]
        current = sec
    out.append(f"| `{path}` | {cell(desc)} | `{cell(leaves[path])}` |")
table = "\n".join(out)

readme = open(readme_path, encoding="utf-8").read()
if START not in readme or END not in readme:
    errors.append(f"README.md lacks the {START} / {END} markers")

if errors:
    for e in errors:
        print(f"   FAIL {e}", file=sys.stderr)
    sys.exit(1)

head, rest = readme.split(START, 1)
_, tail = rest.split(END, 1)
wanted = f"{head}{START}\n{table}\n{END}{tail}"
if mode == "write":
    if wanted != readme:
        open(readme_path, "w", encoding="utf-8").write(wanted)
        print(f"   wrote the parameter table ({len(params)} parameters) into {readme_path}")
    else:
        print(f"   README.md already up to date ({len(params)} parameters)")
elif wanted != readme:
    print("   FAIL README.md's parameter table differs from values.yaml's @param lines;"
          " run helm/check.sh readme", file=sys.stderr)
    sys.exit(1)
else:
    print(f"   ok   {len(leaves)} keys in values.yaml, each with one @param line;"
          f" README table lists exactly these {len(params)}")
PY
}

if [[ "${1:-}" == "readme" ]]; then
  step "README parameter table"
  readme_tool write
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: helm/check.sh [readme]" >&2; exit 2; }

for tool in helm kubernetes-validate python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (make deploy-tools)"
done
echo "helm $(helm version --template '{{.Version}}'), kubernetes-validate $(kubernetes-validate --version), $(python3 --version)"

# ---------------------------------------------------------------------------
step "1. dashboards (helm/parley/dashboards -> $(readlink "$chart/dashboards" || echo '?'))"
[[ -L "$chart/dashboards" ]] || die "helm/parley/dashboards should be a symlink to ../../deploy/grafana/dashboards"
[[ -d "$chart/dashboards" ]] || die "helm/parley/dashboards does not resolve (deploy/grafana/dashboards is missing); helm cannot load the chart"
python3 - "$chart/dashboards" <<'PY'
import json, pathlib, sys
files = sorted(pathlib.Path(sys.argv[1]).glob("*.json"))
uids = {}
for f in files:
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        sys.exit(f"   FAIL {f.name}: not JSON: {e}")
    uid = d.get("uid") if isinstance(d, dict) else None
    if uid in uids:
        sys.exit(f"   FAIL {f.name} and {uids[uid]} share uid {uid}")
    uids[uid] = f.name
total = sum(f.stat().st_size for f in files)
print(f"   ok   {len(files)} dashboard(s), {total} bytes: {' '.join(f.name for f in files) or '(none yet)'}")
PY

# ---------------------------------------------------------------------------
step "2. values.yaml documentation and README parameter table"
readme_tool check

# ---------------------------------------------------------------------------
step "3. helm lint"
helm_ lint --strict "$chart" >"$work/lint.txt" || { cat "$work/lint.txt"; die "helm lint (default values)"; }
ok "helm lint --strict helm/parley"
helm_ lint --strict "$chart" -f "$chart/ci/production-values.yaml" >"$work/lint.txt" \
  || { cat "$work/lint.txt"; die "helm lint (production values)"; }
ok "helm lint --strict helm/parley -f helm/parley/ci/production-values.yaml"

# ---------------------------------------------------------------------------
step "4. helm template | kubernetes-validate --strict"
# Scenarios: name and helm arguments.
scenarios=(
  "default|"
  "production|-f $chart/ci/production-values.yaml"
  "tls|--set tls.enabled=true,networkPolicy.enabled=true,tls.certManager.extraDnsNames[0]=chat.example.com"
  "all-on|--set networkPolicy.enabled=true,ingress.enabled=true,ingress.grpcWeb=true,observability.serviceMonitor.enabled=true,observability.grafanaDashboards.enabled=true,observability.otlp.enabled=true,observability.scrapeAnnotations=true,defaults.autoscaling.enabled=true,defaults.workerThreads=1,services.media.storage.type=s3,services.media.storage.s3.bucket=parley-media,services.media.storage.s3.endpoint=http://minio.storage:9000,services.media.storage.s3.existingSecret=parley-media-s3"
)
# Splits a rendered stream: Kubernetes objects to stdout, the ServiceMonitor
# and Certificates (CRDs) to the file named by $1; prints a summary to stderr.
split_crds() {
  python3 -c '
import re, sys
docs = [d for d in re.split(r"(?m)^---\s*$", sys.stdin.read()) if re.search(r"(?m)^kind:", d)]
crd = [d for d in docs if re.search(r"(?m)^kind: (ServiceMonitor|Certificate)\s*$", d)]
rest = [d for d in docs if d not in crd]
open(sys.argv[1], "w").write("---".join([""] + crd))
sys.stdout.write("---".join([""] + rest))
kinds = {}
for d in rest:
    k = re.search(r"(?m)^kind: (\S+)", d).group(1)
    kinds[k] = kinds.get(k, 0) + 1
sys.stderr.write("%d objects (%s)%s\n" % (len(rest), ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())),
                 " + %d CRD objects" % len(crd) if crd else ""))
' "$1"
}
for scenario in "${scenarios[@]}"; do
  name=${scenario%%|*}
  args=${scenario#*|}
  for v in $KUBE_VERSIONS; do
    out="$work/$name-$v.yaml"
    # shellcheck disable=SC2086 # $args holds several words on purpose
    helm_ template "$release" "$chart" $args --kube-version "$v" >"$out" || die "helm template ($name, $v)"
    summary=$(split_crds "$work/$name-$v.crd.yaml" <"$out" 2>&1 >"$work/$name-$v.k8s.yaml")
    kubernetes-validate --strict --quiet -k "$v" "$work/$name-$v.k8s.yaml" >"$work/kv.txt" 2>&1 \
      || { cat "$work/kv.txt"; die "kubernetes-validate --strict -k $v ($name)"; }
    ok "$(printf '%-10s k8s %-7s %s' "$name" "$v" "$summary")"
  done
done

# ---------------------------------------------------------------------------
step "5. rendered objects"
if python3 -c 'import yaml' 2>/dev/null; then
  python3 - "$work" "$release" $KUBE_VERSIONS <<'PY'
import json, pathlib, re, sys
import yaml

work, release, versions = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
fullname = f"{release}-parley"
failures = []

def load(name, v):
    docs = [d for d in yaml.safe_load_all((work / f"{name}-{v}.yaml").read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}

def check(cond, what):
    if not cond:
        failures.append(what)

def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]

grpc = {"auth": ("parley.auth.v1.AuthService", 50051), "user": ("parley.user.v1.UserService", 50052),
        "chat": ("parley.chat.v1.ChatService", 50053), "media": ("parley.media.v1.MediaService", 50054)}
for v in versions:
    major_minor = tuple(int(x) for x in v.split(".")[:2])
    for scenario in ("default", "production", "all-on"):
        objs = load(scenario, v)
        tag = f"[{scenario} {v}]"
        hpa_on = scenario != "default"
        for svc in ("auth", "user", "chat", "media", "gateway"):
            name = f"{fullname}-{svc}"
            dep = objs.get(("Deployment", name))
            check(dep is not None, f"{tag} Deployment {name} missing")
            if not dep:
                continue
            c = container(dep)
            pod = dep["spec"]["template"]["spec"]
            sc = c["securityContext"]
            check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                  and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{tag} {svc}: container securityContext")
            check(pod["securityContext"].get("runAsNonRoot") is True and pod["securityContext"].get("runAsUser") == 65532
                  and pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
                  f"{tag} {svc}: pod securityContext")
            check("memory" in c["resources"].get("limits", {}) and c["resources"].get("requests"),
                  f"{tag} {svc}: requests and a memory limit")
            check(("replicas" in dep["spec"]) != hpa_on, f"{tag} {svc}: spec.replicas must be absent exactly when the HPA is on")
            check((("HorizontalPodAutoscaler", name) in objs) == hpa_on, f"{tag} {svc}: HPA presence")
            several = hpa_on or dep["spec"].get("replicas", 1) > 1
            check((("PodDisruptionBudget", name) in objs) == several, f"{tag} {svc}: PDB exactly with 2+ replicas or HPA")
            ann = dep["spec"]["template"]["metadata"]["annotations"]
            check("checksum/config" in ann, f"{tag} {svc}: checksum/config annotation")
            check(svc == "gateway" or "checksum/secret" in ann, f"{tag} {svc}: checksum/secret annotation")
            tsc = pod.get("topologySpreadConstraints", [])
            check(tsc and all(t["whenUnsatisfiable"] == "ScheduleAnyway" and t["matchLabelKeys"] == ["pod-template-hash"]
                              for t in tsc) and tsc[0]["topologyKey"] == "kubernetes.io/hostname",
                  f"{tag} {svc}: topologySpreadConstraints")
            prestop = c.get("lifecycle", {}).get("preStop", {})
            if major_minor >= (1, 30):
                check(prestop.get("sleep", {}).get("seconds") == 5, f"{tag} {svc}: preStop sleep 5 s from 1.30")
            else:
                check(not prestop, f"{tag} {svc}: no preStop before 1.30 (no sleep action, no shell in the image)")
            grace = pod["terminationGracePeriodSeconds"]
            cm = objs[("ConfigMap", name)]["data"]
            check(cm.get("TOKIO_WORKER_THREADS") == ("1" if scenario == "all-on" else None),
                  f"{tag} {svc}: TOKIO_WORKER_THREADS only when workerThreads is set")
            shutdown = int(cm["SHUTDOWN_GRACE"].rstrip("s"))
            check(grace >= shutdown + 5 + (5 if prestop else 0), f"{tag} {svc}: grace period {grace} too short")
            if svc == "gateway":
                check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, f"{tag} gateway readiness /readyz")
                check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, f"{tag} gateway liveness /healthz")
                check(grace >= 60 and cm["SHUTDOWN_GRACE"] == "30s", f"{tag} gateway drains 30 s within 60 s")
                check(cm["CHAT_URL"] == f"http://{fullname}-chat-headless:50053", f"{tag} CHAT_URL on the headless Service")
                check(cm["MEDIA_URL"] == f"http://{fullname}-media-headless:50054", f"{tag} gateway MEDIA_URL on the headless Service")
                check(int(cm["GATEWAY_SEND_QUEUE"]) > int(objs[("ConfigMap", f"{fullname}-chat")]["data"]["CHAT_MAX_REPLAY"]),
                      f"{tag} GATEWAY_SEND_QUEUE > CHAT_MAX_REPLAY")
                check(dep["spec"]["minReadySeconds"] >= 10, f"{tag} gateway minReadySeconds")
            else:
                health, port = grpc[svc]
                check(c["readinessProbe"]["grpc"] == {"port": port, "service": health}, f"{tag} {svc} readiness {health}")
                check(c["livenessProbe"]["grpc"] == {"port": port, "service": ""}, f"{tag} {svc} liveness on health \"\"")
                check(c["startupProbe"]["grpc"] == {"port": port, "service": ""}
                      and c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120,
                      f"{tag} {svc} startup probe covers 120 s of migrations")
                check(any(e["name"] == f"{svc.upper()}_DATABASE_URL" and "secretKeyRef" in e["valueFrom"] for e in c["env"]),
                      f"{tag} {svc} database URL from a Secret")
                hl = objs.get(("Service", f"{name}-headless"))
                check(hl is not None and hl["spec"]["clusterIP"] == "None", f"{tag} {svc} headless Service")
            if svc == "chat":
                check(cm["MEDIA_URL"] == f"http://{fullname}-media-headless:50054", f"{tag} chat MEDIA_URL on the headless Service")
            if svc == "media":
                tmp = next(vol for vol in pod["volumes"] if vol["name"] == "tmp")
                check(tmp["emptyDir"]["sizeLimit"] == "128Mi", f"{tag} media has room in /tmp for images")
                if scenario == "default":
                    check(cm["MEDIA_STORE_URL"] == "file:///var/lib/parley/media", f"{tag} media on its volume")
                    check(dep["spec"]["strategy"] == {"type": "Recreate"} and dep["spec"]["replicas"] == 1,
                          f"{tag} one media pod on a ReadWriteOnce volume, replaced with Recreate")
                    claim = objs.get(("PersistentVolumeClaim", f"{fullname}-media-files"))
                    check(claim is not None and claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
                          f"{tag} media's claim, kept on uninstall")
                    check(any(m["mountPath"] == "/var/lib/parley/media" for m in c["volumeMounts"]), f"{tag} media volume mounted")
                else:
                    check(cm["MEDIA_STORE_URL"] == "s3://parley-media", f"{tag} media on S3: {cm['MEDIA_STORE_URL']}")
                    names = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
                    check(names.get("MEDIA_S3_ACCESS_KEY_ID", {}).get("name") == "parley-media-s3"
                          and names.get("MEDIA_S3_SECRET_ACCESS_KEY", {}).get("key") == "secret-access-key",
                          f"{tag} media's S3 keys from its Secret")
                    check(("PersistentVolumeClaim", f"{fullname}-media-files") not in objs, f"{tag} no claim with S3")
            if svc == "auth":
                check(cm["AUTH_JWT_PRIVATE_KEY_FILE"].startswith("/etc/parley/jwt/"), f"{tag} auth key from a file")
                check(any(vol.get("secret") for vol in pod["volumes"]), f"{tag} auth key Secret volume")
        secrets = {n for (k, n) in objs if k == "Secret"}
        bundled = scenario != "production"
        check((("StatefulSet", f"{fullname}-postgresql") in objs) == bundled, f"{tag} bundled Postgres presence")
        check((("Deployment", f"{fullname}-redis") in objs) == bundled, f"{tag} bundled Redis presence")
        if bundled:
            import base64
            redis = container(objs[("Deployment", f"{fullname}-redis")])
            check("--requirepass" in redis["args"], f"{tag} the bundled Redis needs a password")
            data = objs[("Secret", f"{fullname}-redis")]["data"]
            password = base64.b64decode(data["redis-password"]).decode()
            url = base64.b64decode(data["redis-url"]).decode()
            check(len(password) >= 32 and url.startswith(f"redis://:{password}@"), f"{tag} chat's Redis URL carries the password")
        if scenario == "production":
            check(not secrets, f"{tag} production uses existing Secrets only, got {secrets}")
            dep = objs[("Deployment", f"{fullname}-chat")]
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(dep)["env"]}
            check(refs["CHAT_DATABASE_URL"] == {"name": "parley-database", "key": "chat-database-url"}
                  and refs["CHAT_REDIS_URL"] == {"name": "parley-redis", "key": "redis-url"}, f"{tag} existing Secret keys")
        else:
            check(secrets == {f"{fullname}-jwt", f"{fullname}-database", f"{fullname}-redis", f"{fullname}-internal"},
                  f"{tag} chart-made Secrets: {secrets}")
        for svc in ("chat", "gateway"):
            dep = objs[("Deployment", f"{fullname}-{svc}")]
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(dep).get("env", [])}
            want = "parley-internal" if scenario == "production" else f"{fullname}-internal"
            check(refs.get("GATEWAY_STREAM_SECRET", {}).get("name") == want, f"{tag} {svc} reads the gateway stream secret")
            check((refs.get("CHAT_BUS_SECRET", {}).get("name") == want) == (svc == "chat"), f"{tag} {svc} and the bus secret")
        if scenario != "default":
            ing = objs.get(("Ingress", f"{fullname}-gateway"))
            check(ing is not None and "nginx.ingress.kubernetes.io/proxy-read-timeout" in ing["metadata"]["annotations"],
                  f"{tag} Ingress with WebSocket timeouts")
            if scenario == "all-on":
                routed = {p["path"]: p["backend"]["service"]["name"]
                          for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
                check(routed.get("/parley.media.v1.MediaService/") == f"{fullname}-media"
                      and routed.get("/parley.auth.v1.AuthService/") == f"{fullname}-auth"
                      and routed.get("/") == f"{fullname}-gateway", f"{tag} gRPC-Web paths on the Ingress: {routed}")
            nps = [n for (k, n) in objs if k == "NetworkPolicy"]
            deny = objs.get(("NetworkPolicy", f"{fullname}-default-deny"))
            check(deny is not None and deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
                  and "ingress" not in deny["spec"] and "egress" not in deny["spec"], f"{tag} default-deny policy")
            check(len(nps) >= 7, f"{tag} NetworkPolicies: {nps}")
            sm = [d for d in yaml.safe_load_all((work / f"{scenario}-{v}.crd.yaml").read_text())
                  if d and d["kind"] == "ServiceMonitor"]
            check(len(sm) == 1, f"{tag} one ServiceMonitor")
            for m in sm:
                spec = m["spec"]
                check(m["apiVersion"] == "monitoring.coreos.com/v1", f"{tag} ServiceMonitor apiVersion")
                check(set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}, f"{tag} ServiceMonitor spec keys")
                check(spec["jobLabel"] == "app.kubernetes.io/component", f"{tag} ServiceMonitor jobLabel")
                for ep in spec["endpoints"]:
                    check(set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout"} and ep["port"] == "admin"
                          and re.fullmatch(r"(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?", ep["interval"]),
                          f"{tag} ServiceMonitor endpoint {ep}")
            admin_services = [n for (k, n), d in objs.items() if k == "Service"
                              and any(p["name"] == "admin" for p in d["spec"]["ports"])]
            check(len(admin_services) == 5, f"{tag} exactly five Services expose an admin port (one target per pod): {admin_services}")
            dash = objs.get(("ConfigMap", f"{fullname}-dashboards"))
            if dash is not None:
                check(dash["metadata"]["labels"].get("grafana_dashboard") == "1", f"{tag} dashboards label")
                for key, text in dash["data"].items():
                    try:
                        json.loads(text)
                    except ValueError:
                        failures.append(f"{tag} dashboard {key} is not JSON once rendered")

    # TLS: https:// URLs, the files from the mounted Secret, mTLS on the
    # gRPC ports only, probes on the admin port, one Certificate each.
    objs = load("tls", v)
    tag = f"[tls {v}]"
    certs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((work / f"tls-{v}.crd.yaml").read_text())
             if d and d["kind"] == "Certificate"}
    for svc in ("auth", "user", "chat", "media", "gateway"):
        name = f"{fullname}-{svc}"
        env = objs[("ConfigMap", name)]["data"]
        prefix = svc.upper()
        check(env.get(f"{prefix}_TLS_CERT_FILE") == "/etc/parley/tls/tls.crt"
              and env.get(f"{prefix}_TLS_KEY_FILE") == "/etc/parley/tls/tls.key"
              and env.get(f"{prefix}_TLS_CA_FILE") == "/etc/parley/tls/ca.crt", f"{tag} {svc} TLS files")
        check((f"{prefix}_TLS_CLIENT_CA_FILE" in env) == (svc != "gateway"), f"{tag} {svc} mTLS only on gRPC ports")
        for key, url in env.items():
            if key.endswith("_URL") and key not in ("MEDIA_STORE_URL",):
                check(url.startswith("https://"), f"{tag} {svc} {key}={url}")
        dep = objs[("Deployment", name)]
        c = container(dep)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            check("grpc" not in c[probe] and c[probe]["httpGet"]["port"] == "admin", f"{tag} {svc} {probe} on the admin port")
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {vol["name"]: vol for vol in dep["spec"]["template"]["spec"]["volumes"]}
        check(mounts.get("tls", {}).get("mountPath") == "/etc/parley/tls" and "subPath" not in mounts.get("tls", {}),
              f"{tag} {svc} mounts its whole Secret (so renewals appear in place)")
        check(volumes.get("tls", {}).get("secret", {}).get("secretName") == f"{name}-tls", f"{tag} {svc} Secret")
        cert = certs.get(f"{name}-tls", {}).get("spec", {})
        check(cert.get("secretName") == f"{name}-tls", f"{tag} {svc} Certificate")
        check({"server auth", "client auth"} <= set(cert.get("usages", [])), f"{tag} {svc} serves and calls")
        dialed = name if svc == "gateway" else f"{name}-headless"
        check(dialed in cert.get("dnsNames", []), f"{tag} {svc} certificate names {dialed}")
    check("chat.example.com" in certs.get(f"{fullname}-gateway-tls", {}).get("spec", {}).get("dnsNames", []),
          f"{tag} gateway certificate takes extra names")
    check(len(certs) == 5, f"{tag} five Certificates: {sorted(certs)}")

if failures:
    for f in failures:
        print(f"   FAIL {f}", file=sys.stderr)
    sys.exit(1)
print(f"   ok   TLS (URLs, files, probes, Certificates), probes, security contexts, resources, replicas/HPA/PDB, spread, preStop by version,"
      f" grace periods, CHAT_URL, secrets, Ingress, NetworkPolicies, ServiceMonitor, dashboards"
      f" ({len(versions)} versions x 3 scenarios)")
PY
  # Dashboards: the rendered ConfigMap holds exactly the files of dashboards/.
  want=$(cd "$chart/dashboards" && ls -1 -- *.json 2>/dev/null | sort || true)
  got=$(python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards"):
        print("\n".join(sorted(d["data"])))
' "$work/production-$(set -- $KUBE_VERSIONS; echo "$1").yaml")
  [[ "$want" == "$got" ]] || die "the dashboards ConfigMap holds [$got], dashboards/ has [$want]"
  ok "dashboards ConfigMap holds every file of dashboards/ ($(echo "$want" | grep -c . || true) file(s))"
else
  echo "   SKIP PyYAML is not importable by python3 (kubernetes-validate's environment has it); object checks skipped"
fi

# ---------------------------------------------------------------------------
step "6. values that must be refused"
expect_refusal() { # description, expected text, helm args...
  local what=$1 expected=$2
  shift 2
  if helm_ template "$release" "$chart" "$@" >"$work/refused.txt" 2>&1; then
    die "$what: rendered, but should have been refused"
  fi
  grep -qF -- "$expected" "$work/refused.txt" || { cat "$work/refused.txt"; die "$what: refused without '$expected'"; }
  ok "$what"
}
expect_refusal "GATEWAY_SEND_QUEUE equal to CHAT_MAX_REPLAY" "must exceed services.chat.config.maxReplay" \
  --set services.gateway.config.sendQueue=1000
expect_refusal "CHAT_MAX_REPLAY above GATEWAY_SEND_QUEUE" "must exceed services.chat.config.maxReplay" \
  --set services.chat.config.maxReplay=2000
expect_refusal "CHAT_STREAM_QUEUE not above CHAT_MAX_REPLAY" "streamQueue (CHAT_STREAM_QUEUE=1000) must exceed" \
  --set services.chat.config.streamQueue=1000
expect_refusal "grace period shorter than preStop + drain" "terminationGracePeriodSeconds (30) must be at least" \
  --set services.gateway.terminationGracePeriodSeconds=30
expect_refusal "external Postgres without a URL or Secret" "postgresql.enabled is false" \
  --set postgresql.enabled=false
expect_refusal "external Redis without a URL or Secret" "redis.enabled is false" --set redis.enabled=false
expect_refusal "HPA with minReplicas > maxReplicas" "exceeds maxReplicas" \
  --set defaults.autoscaling.enabled=true,defaults.autoscaling.minReplicas=20
expect_refusal "two media pods on one ReadWriteOnce volume" "keeps its files on a ReadWriteOnce volume" \
  --set services.media.replicaCount=2
expect_refusal "media on S3 without a bucket" "set services.media.storage.s3.bucket" \
  --set services.media.storage.type=s3
expect_refusal "schema: an unknown media store" "services.media.storage.type" \
  --set services.media.storage.type=ftp
expect_refusal "schema: a number that is a word" "Invalid type. Expected: integer" \
  --set services.chat.config.maxReplay=many
expect_refusal "schema: an unknown key" "Additional property replicas is not allowed" \
  --set services.chat.replicas=3
expect_refusal "schema: a bad duration" "services.auth.config.accessTokenTtl" \
  --set services.auth.config.accessTokenTtl=soon
expect_refusal "schema: a database URL that is not Postgres" "externalDatabase.url" \
  --set postgresql.enabled=false,externalDatabase.url=sqlite://data/auth.db
expect_refusal "TLS without cert-manager or Secrets" "set tls.existingSecrets.auth" \
  --set tls.enabled=true,tls.certManager.enabled=false
expect_refusal "schema: an issuer of an unknown kind" "tls.certManager.issuerRef.kind" \
  --set tls.certManager.issuerRef.kind=Vault
expect_refusal "schema: an out-of-range queue" "services.gateway.config.sendQueue" \
  --set services.gateway.config.sendQueue=2000000
expect_refusal "schema: a negative worker count" "defaults.workerThreads" \
  --set defaults.workerThreads=-1

# ---------------------------------------------------------------------------
step "7. variables the chart sets, against the binaries' --help"
bindir=${PARLEY_BIN_DIR:-}
if [[ -z "$bindir" ]]; then
  for d in "$root/target/debug" /var/cache/parley/target/debug; do
    [[ -x "$d/parley-auth" ]] && { bindir=$d; break; }
  done
fi
if [[ -n "$bindir" && -x "$bindir/parley-auth" ]]; then
  first=$(set -- $KUBE_VERSIONS; echo "$1")
  for scenario in all-on tls; do
  for svc in auth user chat media gateway; do
    "$bindir/parley-$svc" --help >"$work/help.txt"
    names=$(python3 - "$work/$scenario-$first.yaml" "$release-parley-$svc" <<'PY'
import re, sys
text, name = open(sys.argv[1]).read(), sys.argv[2]
for doc in re.split(r"(?m)^---\s*$", text):
    if re.search(r"(?m)^  name: %s$" % re.escape(name), doc):
        if re.search(r"(?m)^kind: ConfigMap$", doc):
            print("\n".join(re.findall(r"(?m)^  ([A-Z][A-Z0-9_]*):", doc)))
        if re.search(r"(?m)^kind: Deployment$", doc):
            print("\n".join(re.findall(r"(?m)^            - name: ([A-Z][A-Z0-9_]*)$", doc)))
PY
)
    missing=()
    for n in $names; do grep -q "\[env: $n[]=]" "$work/help.txt" || missing+=("$n"); done
    [[ ${#missing[@]} -eq 0 ]] || die "parley-$svc does not read ${missing[*]} (its --help lists every variable it reads)"
    ok "parley-$svc reads all $(echo "$names" | grep -c .) variables the chart sets ($scenario)"
  done
  done
else
  echo "   SKIP no built binaries (set PARLEY_BIN_DIR, or cargo build --workspace --bins)"
fi

printf '\nAll Helm chart checks passed.\n'
