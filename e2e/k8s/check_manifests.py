#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests (no API server, no Docker engine needed).

Renders `manifests/` and `manifests/monitoring/` with the real `kubectl kustomize`, reads
`manifests/examples/sidecar.yaml`, and checks:
  * every expected kind is present (Namespace, the 4 CRDs, ServiceAccounts, RBAC, Deployment, Services, DaemonSet;
    ServiceMonitors and the Grafana dashboard ConfigMap in monitoring/);
  * the RBAC rules grant nothing beyond the control plane's list (l7mp.io kinds: get/list/watch/create/update/
    patch/delete (the kubernetes store), their /status: update/patch; pods and endpointslices: get/list/watch;
    leases in l7mp-system: create, get/update);
    the agents have no binding and mount no token;
  * every l7mp container's image is one that docker/Dockerfile.* builds, and its args use only flags its binary
    (the Dockerfile's ENTRYPOINT) accepts, read from `<binary> --help`;
  * probes point at the container's admin port (the one given to --admin);
  * runAsNonRoot is set for every pod.
Exits 1 naming every failure. Binaries: $L7MP_BIN_DIR, else $CARGO_TARGET_DIR/release, else
~/.cache/l7mp/target/release. kubectl: $KUBECTL, else `kubectl`.
YAML: PyYAML (the standard library has none); when this interpreter lacks it, re-runs under the project's venv.
"""

import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    venv = Path(os.environ.get("L7MP_PYTHON", Path.home() / ".cache/l7mp/venv/bin/python"))
    if venv.exists() and os.environ.get("L7MP_CHECK_REEXEC") != "1":
        os.environ["L7MP_CHECK_REEXEC"] = "1"
        os.execv(str(venv), [str(venv), __file__, *sys.argv[1:]])
    sys.exit("check_manifests: FAIL: PyYAML is missing (pip install pyyaml, or set L7MP_PYTHON to a python that has it)")

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = os.environ.get("KUBECTL", "kubectl")
NAMESPACE = "l7mp-system"

failures = []


def fail(msg):
    failures.append(msg)


def bin_dir():
    if os.environ.get("L7MP_BIN_DIR"):
        return Path(os.environ["L7MP_BIN_DIR"])
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/l7mp/target"))
    return Path(target) / "release"


def kustomize(path):
    try:
        out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.exit(f"check_manifests: FAIL: cannot run {KUBECTL} kustomize {path}: {e}")
    if out.returncode != 0:
        sys.exit(f"check_manifests: FAIL: {KUBECTL} kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name_of(obj):
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


# ---- Dockerfiles: image name -> binary --------------------------------------------------------------------------


def dockerfile_images():
    images = {}
    for df in sorted((ROOT / "docker").glob("Dockerfile.*")):
        text = df.read_text()
        m = re.search(r"^# image: (\S+)$", text, re.M)
        e = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M)
        b = re.search(r"cargo build --release --locked -p \S+ --bin (\S+)", text)
        if not (m and e and b):
            fail(f"{df.relative_to(ROOT)}: needs a '# image: NAME' line, a cargo build --bin and an exec-form ENTRYPOINT")
            continue
        binary = Path(e.group(1)).name
        if binary != b.group(1):
            fail(f"{df.relative_to(ROOT)}: ENTRYPOINT runs {binary} but cargo builds --bin {b.group(1)}")
        if not re.search(r"^USER (?!0\b|root\b)\S+", text, re.M):
            fail(f"{df.relative_to(ROOT)}: the runtime stage sets no non-root USER")
        images[m.group(1)] = binary
    if not images:
        fail("docker/: no Dockerfile.* found")
    return images


_help_cache = {}


def accepted_flags(binary):
    if binary not in _help_cache:
        path = bin_dir() / binary
        try:
            out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.exit(f"check_manifests: FAIL: cannot run {path} --help: {e} (set L7MP_BIN_DIR or build the binaries)")
        flags = set()
        # clap's option lines: "  -c, --config <FILE>", "      --check", "  -s, --strict".
        for line in out.stdout.splitlines():
            m = re.match(r"^\s{2,}(?:(-[A-Za-z0-9]),\s+)?(--[a-z0-9][a-z0-9-]*)\b", line)
            if m:
                flags.add(m.group(2))
                if m.group(1):
                    flags.add(m.group(1))
        if "--help" not in flags:
            sys.exit(f"check_manifests: FAIL: could not read the flags of {path} --help")
        _help_cache[binary] = flags
    return _help_cache[binary]


# ---- workloads --------------------------------------------------------------------------------------------------


def pod_specs(docs):
    for d in docs:
        if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]


def check_workload(obj, spec, images):
    where = name_of(obj)
    pod_sc = spec.get("securityContext") or {}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cwhere = f"{where} container {c['name']}"
        csc = c.get("securityContext") or {}
        if not (csc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            fail(f"{cwhere}: runAsNonRoot is not true (pod or container securityContext)")
        image = c.get("image", "")
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        if "/l7mp" not in "/" + repo:
            continue  # an application container (the sidecar example's app)
        if repo not in images:
            fail(f"{cwhere}: image {image} is not one docker/Dockerfile.* builds ({', '.join(sorted(images))})")
            continue
        binary = images[repo]
        if c.get("command"):
            fail(f"{cwhere}: sets command, which overrides the image's ENTRYPOINT ({binary})")
        flags = accepted_flags(binary)
        args = [str(a) for a in c.get("args", [])]
        for a in args:
            if a.startswith("-"):
                flag = a.split("=", 1)[0]
                if flag not in flags:
                    fail(f"{cwhere}: flag {flag} is not accepted by {binary} (its --help lists {', '.join(sorted(flags))})")
        for a in csc.get("capabilities", {}).get("add", []) or []:
            fail(f"{cwhere}: adds capability {a} (only as an optional comment, for --offload auto)")
        if obj.get("kind") != "Deployment" or binary != "l7mp-control":
            if spec.get("automountServiceAccountToken") is not False:
                fail(f"{where}: an agent needs no API access, set automountServiceAccountToken: false")
        # The admin port: the port of --admin ADDR:PORT, which must be a named containerPort.
        admin_port = None
        for i, a in enumerate(args):
            value = args[i + 1] if a == "--admin" and i + 1 < len(args) else (a[8:] if a.startswith("--admin=") else None)
            if value is not None:
                admin_port = int(value.rsplit(":", 1)[1])
        if admin_port is None:
            fail(f"{cwhere}: no --admin, so no /ready and /live to probe")
            continue
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
            p = c.get(probe)
            if p is None:
                if probe == "readinessProbe":
                    fail(f"{cwhere}: no readinessProbe")
                continue
            http = p.get("httpGet") or {}
            port = http.get("port")
            port = ports.get(port) if isinstance(port, str) else port
            if port != admin_port:
                fail(f"{cwhere}: {probe} probes port {http.get('port')}, not the admin port {admin_port}")
            if http.get("path") != path:
                fail(f"{cwhere}: {probe} probes {http.get('path')}, expected {path}")
            # On loopback, the kubelet only reaches it with hostNetwork (and host: 127.0.0.1).
            admin_addr = next(args[i + 1] for i, a in enumerate(args) if a == "--admin")
            if admin_addr.startswith("127.") and not (spec.get("hostNetwork") and http.get("host", "").startswith("127.")):
                fail(f"{cwhere}: --admin {admin_addr} is on loopback, which the kubelet cannot probe here")


# ---- RBAC -------------------------------------------------------------------------------------------------------

L7MP_KINDS = {"virtualservices", "targets", "routes", "rules"}
READ = {"get", "list", "watch"}
# (apiGroup, resource) -> allowed verbs, for the ClusterRole.
WRITE = {"create", "update", "patch", "delete"}
CLUSTER_ALLOWED = {("l7mp.io", k): READ | WRITE for k in L7MP_KINDS}
CLUSTER_ALLOWED |= {("l7mp.io", k + "/status"): {"update", "patch"} for k in L7MP_KINDS}
CLUSTER_ALLOWED |= {("", "pods"): READ, ("discovery.k8s.io", "endpointslices"): READ}
# Leader election, in the Role only.
ROLE_ALLOWED = {("coordination.k8s.io", "leases"): {"create", "get", "update"}}


def check_rbac(docs):
    roles = {}
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            roles[(d["kind"], d["metadata"]["name"])] = d
            allowed = CLUSTER_ALLOWED if d["kind"] == "ClusterRole" else ROLE_ALLOWED
            if d["kind"] == "Role" and d["metadata"].get("namespace") != NAMESPACE:
                fail(f"{name_of(d)}: not in {NAMESPACE}")
            if d.get("aggregationRule"):
                fail(f"{name_of(d)}: aggregationRule grants what other roles grant")
            for rule in d.get("rules", []):
                if rule.get("nonResourceURLs"):
                    fail(f"{name_of(d)}: grants nonResourceURLs {rule['nonResourceURLs']}")
                for group in rule.get("apiGroups", []):
                    for res in rule.get("resources", []):
                        ok = allowed.get((group, res))
                        if ok is None:
                            fail(f"{name_of(d)}: grants resource {res!r} in group {group!r}, which is not on the list")
                            continue
                        for verb in rule.get("verbs", []):
                            if verb not in ok:
                                fail(f"{name_of(d)}: grants verb {verb!r} on {group + '/' if group else ''}{res}")
                if any(v == "*" for v in rule.get("verbs", [])):
                    fail(f"{name_of(d)}: grants verb '*'")
    for d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ref = d["roleRef"]
            if (ref["kind"], ref["name"]) not in roles:
                fail(f"{name_of(d)}: binds {ref['kind']}/{ref['name']}, which these manifests do not define")
            for s in d.get("subjects", []):
                if s != {"kind": "ServiceAccount", "name": "l7mp-control", "namespace": NAMESPACE}:
                    fail(f"{name_of(d)}: binds {s}, only the control plane's ServiceAccount may be bound")
    for d in docs:
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "l7mp-agent":
            if d.get("automountServiceAccountToken") is not False:
                fail(f"{name_of(d)}: set automountServiceAccountToken: false (agents need no API access)")


# ---- main -------------------------------------------------------------------------------------------------------


def expect(docs, where, wanted):
    have = {}
    for d in docs:
        have.setdefault(d.get("kind"), set()).add(d["metadata"]["name"])
    for kind, names in wanted.items():
        missing = set(names) - have.get(kind, set())
        if missing:
            fail(f"{where}: missing {kind} {', '.join(sorted(missing))}")


def main():
    if shutil.which(KUBECTL) is None:
        if os.environ.get("L7MP_REQUIRE_KUBECTL") == "1":
            sys.exit(f"check_manifests: FAIL: {KUBECTL} not found and L7MP_REQUIRE_KUBECTL=1")
        print(f"check_manifests: SKIP: {KUBECTL} not found (it renders the kustomizations)")
        return
    images = dockerfile_images()

    base = kustomize(ROOT / "manifests")
    expect(base, "manifests/", {
        "Namespace": {NAMESPACE},
        "CustomResourceDefinition": {f"{k}.l7mp.io" for k in L7MP_KINDS},
        "ServiceAccount": {"l7mp-control", "l7mp-agent"},
        "ClusterRole": {"l7mp-control"},
        "ClusterRoleBinding": {"l7mp-control"},
        "Role": {"l7mp-control-leader-election"},
        "RoleBinding": {"l7mp-control-leader-election"},
        "Deployment": {"l7mp-control"},
        "Service": {"l7mp-control"},
        "DaemonSet": {"l7mp-agent"},
    })
    for d in base:
        if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            if d["metadata"].get("namespace") != NAMESPACE:
                fail(f"{name_of(d)}: not in namespace {NAMESPACE}")
        if d["kind"] == "ServiceMonitor":
            fail(f"{name_of(d)}: belongs in manifests/monitoring/ (the CRD may not exist in a cluster)")
    svc = next((d for d in base if d["kind"] == "Service" and d["metadata"]["name"] == "l7mp-control"), None)
    if svc:
        ports = {p["port"] for p in svc["spec"]["ports"]}
        for p in (18000, 18001):
            if p not in ports:
                fail(f"{name_of(svc)}: does not expose port {p}")
    ds = next((d for d in base if d["kind"] == "DaemonSet"), None)
    if ds and not ds["spec"]["template"]["spec"].get("hostNetwork"):
        fail(f"{name_of(ds)}: the gateway agents run with hostNetwork")
    check_rbac(base)

    monitoring = kustomize(ROOT / "manifests" / "monitoring")
    expect(monitoring, "manifests/monitoring/", {
        "ServiceMonitor": {"l7mp-control", "l7mp-agent"},
        "ConfigMap": {"l7mp-grafana-dashboard"},
    })
    for d in monitoring:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "l7mp-grafana-dashboard":
            want = (ROOT / "manifests/grafana/l7mp-agent.json").read_text()
            if d.get("data", {}).get("l7mp-agent.json", "").strip() != want.strip():
                fail(f"{name_of(d)}: does not hold manifests/grafana/l7mp-agent.json")
        if d["kind"] == "ServiceMonitor":
            sel = d["spec"]["selector"].get("matchLabels", {})
            svcs = [s for s in base if s["kind"] == "Service"
                    and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            ports = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
            for e in d["spec"]["endpoints"]:
                if e.get("port") not in ports:
                    fail(f"{name_of(d)}: scrapes port {e.get('port')!r}, which no Service it selects has")

    sidecar = [d for d in yaml.safe_load_all((ROOT / "manifests/examples/sidecar.yaml").read_text()) if d]
    expect(sidecar, "manifests/examples/sidecar.yaml", {"Deployment": {"echo"}})
    for d in sidecar:
        if d["kind"] == "Deployment" and len(d["spec"]["template"]["spec"]["containers"]) < 2:
            fail(f"{name_of(d)}: the sidecar example needs the app and the agent")

    n = 0
    for obj, spec in [*pod_specs(base), *pod_specs(sidecar)]:
        check_workload(obj, spec, images)
        n += 1

    if failures:
        print("check_manifests: FAIL", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    kinds = sorted({d["kind"] for d in base + monitoring + sidecar})
    print(f"check_manifests: OK: {len(base)} objects in manifests/, {len(monitoring)} in manifests/monitoring/, "
          f"{len(sidecar)} in examples/sidecar.yaml ({', '.join(kinds)}); {n} workloads; "
          f"images {', '.join(sorted(images))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
