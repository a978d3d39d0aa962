#!/usr/bin/env python3
"""Validates rendered kustomize output offline: every object against the JSON Schemas in
deploy/schemas/ (strict: an unknown field fails), then the invariants the deployment
relies on. Called by scripts/validate-deploy, which renders; usable alone:

    validate.py --root DEPLOY_DIR --repo REPO_DIR LABEL=RENDERED.yaml ...

LABEL is what failures and the success line name (e.g. overlays/dev). Exit 0 when all
hold, 1 with one `FAIL <label>: <object>: <field>: <problem>` line per problem.
"""

import argparse
import collections
import json
import pathlib
import re
import sys
import urllib.parse

try:
    import jsonschema
    import yaml
except ImportError as e:  # scripts/validate-deploy installs them
    sys.exit(f"validate-deploy: missing Python module: {e.name} (pip install jsonschema pyyaml)")

# libyaml's loader when PyYAML was built with it (several times faster), else the Python one
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text):
    return list(yaml.load_all(text, Loader=YAML_LOADER))

# ---------------------------------------------------------------------------------------
# reporting


class Report:
    def __init__(self):
        self.failures = []

    def fail(self, label, obj, field, problem):
        where = f"{label}: {describe(obj)}" if obj is not None else label
        if field:
            where += f": {field}"
        self.failures.append(f"FAIL {where}: {problem}")


def describe(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<no name>")
    return f"{obj.get('kind', '<no kind>')} {ns + '/' if ns else ''}{name}"


def json_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(object)"


# ---------------------------------------------------------------------------------------
# schemas


def load_schemas(schema_dir, check):
    """(apiVersion, kind) -> validator, from every *.json carrying
    x-kubernetes-group-version-kind; with `check`, each schema is first validated against
    the JSON Schema 2020-12 meta-schema (slow: about 2 s for all of them)."""
    validators = {}
    for path in sorted(pathlib.Path(schema_dir).rglob("*.json")):
        schema = json.loads(path.read_text())
        gvks = schema.get("x-kubernetes-group-version-kind")
        if not gvks:
            continue
        if check:
            jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        for gvk in gvks:
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            validators[(api_version, gvk["kind"])] = (validator, path.name)
    return validators


def check_schema(report, label, obj, validators):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in validators:
        known = ", ".join(sorted(f"{k[1]} ({k[0]})" for k in validators))
        report.fail(label, obj, "apiVersion/kind", f"no schema for {key[1]} ({key[0]}) in deploy/schemas (known: {known})")
        return
    validator, _ = validators[key]
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        report.fail(label, obj, json_path(err.absolute_path), err.message)


# ---------------------------------------------------------------------------------------
# secrets never in ConfigMaps (nor literal in container env)

SECRET_NAME = re.compile(r"passw(or)?d|passphrase|(^|[^a-z])pass($|[^a-z])|secret|token|credential|(^|[^a-z])key($|[^a-z])|apikey|private_?key|access_?key", re.I)
ENV_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")  # `sasl.password: "${KAFKA_PASSWORD}"` in a pipeline
SECRET_VALUES = [
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I), "a URL with a password (scheme://user:pass@...)"),
    (re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|PUBLIC KEY|CERTIFICATE)-----"), "a PEM key or certificate"),
    (re.compile(r"\bymk_[A-Za-z0-9]+_[A-Za-z0-9]+"), "a ymera API key"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."), "a JWT"),
    (re.compile(r"^(postgres|postgresql)://", re.I), "a PostgreSQL URL (YMERA__WAREHOUSE__URL belongs in a Secret)"),
]


def is_path_setting(name, value):
    """`public_key_file: /etc/ymera/jwt/public.pem` names where a Secret is mounted."""
    return bool(re.search(r"(_file|_path|_dir)$", name, re.I)) and isinstance(value, str) and value.startswith("/")


def secret_findings(name, value):
    """Problems with one (name, scalar value) pair."""
    found = []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) != "":
        if SECRET_NAME.search(name) and not is_path_setting(name, value) and not ENV_REFERENCE.match(str(value)):
            found.append(f"the name `{name}` looks like a credential")
    if isinstance(value, str):
        for pattern, what in SECRET_VALUES:
            if pattern.search(value):
                found.append(f"the value looks like {what}")
    return found


def walk_values(node, path="", name=""):
    """(dotted path, name, scalar) for every scalar in parsed YAML/JSON. List items keep
    no name: `key: [task_id]` (a warehouse sink's key columns) is no credential."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_values(v, f"{path}.{k}" if path else str(k), str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_values(v, f"{path}[{i}]", "")
    else:
        yield path, name, node


def check_configmap(report, label, cm):
    """No credential in any key or value; YAML/JSON files are parsed and every nested
    key and value checked."""
    for key in cm.get("binaryData") or {}:
        report.fail(label, cm, f"binaryData.{key}", "binary data in a ConfigMap cannot be checked for credentials; use a Secret")
    for key, value in (cm.get("data") or {}).items():
        field = f"data.{key}"
        if not key.endswith((".yaml", ".yml", ".json")):
            for problem in secret_findings(key, value):
                report.fail(label, cm, field, f"{problem}: credentials belong in a Secret")
            continue
        if SECRET_NAME.search(key.rsplit(".", 1)[0]):
            report.fail(label, cm, field, f"the file name `{key}` looks like a credential: credentials belong in a Secret")
        try:
            docs = load_all(value or "")
        except yaml.YAMLError as e:
            report.fail(label, cm, field, f"not valid YAML: {e}")
            continue
        for doc in docs:
            for path, name, scalar in walk_values(doc):
                for problem in secret_findings(name, scalar):
                    report.fail(label, cm, f"{field}: {path}", f"{problem}: credentials belong in a Secret")


# ---------------------------------------------------------------------------------------
# workloads: probes, resources, security context, /tmp

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}


def pod_spec(obj):
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(obj):
    return (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def check_workload(report, label, obj, service_accounts):
    spec = pod_spec(obj)
    psc = spec.get("securityContext") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    sa = spec.get("serviceAccountName") or "default"
    if spec.get("automountServiceAccountToken") is not False and service_accounts.get(sa) is not False:
        report.fail(label, obj, "spec.template.spec.automountServiceAccountToken", "must be false (here or on the ServiceAccount): ymera does not call the Kubernetes API")
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            at = f"spec.template.spec.{kind}[{i}]"
            name = c.get("name", "?")
            if kind == "containers":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if not c.get(probe):
                        report.fail(label, obj, f"{at}.{probe}", f"container {name} has no {probe}")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if not (res.get(part) or {}).get(r):
                        report.fail(label, obj, f"{at}.resources.{part}.{r}", f"container {name} sets no {part} {r}")
            csc = c.get("securityContext") or {}
            if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                report.fail(label, obj, f"{at}.securityContext.runAsNonRoot", f"container {name} must run as non-root")
            if csc.get("runAsUser", psc.get("runAsUser")) == 0:
                report.fail(label, obj, f"{at}.securityContext.runAsUser", f"container {name} runs as uid 0")
            if csc.get("readOnlyRootFilesystem") is not True:
                report.fail(label, obj, f"{at}.securityContext.readOnlyRootFilesystem", f"container {name} must have a read-only root filesystem")
            if csc.get("allowPrivilegeEscalation") is not False:
                report.fail(label, obj, f"{at}.securityContext.allowPrivilegeEscalation", f"container {name} must set it to false")
            if csc.get("privileged"):
                report.fail(label, obj, f"{at}.securityContext.privileged", f"container {name} is privileged")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                report.fail(label, obj, f"{at}.securityContext.capabilities.drop", f"container {name} must drop ALL capabilities")
            if (csc.get("capabilities") or {}).get("add"):
                report.fail(label, obj, f"{at}.securityContext.capabilities.add", f"container {name} adds capabilities")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                report.fail(label, obj, f"{at}.securityContext.seccompProfile.type", f"container {name} must use RuntimeDefault (is {seccomp})")
            tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
            if not tmp or "emptyDir" not in (volumes.get(tmp[0].get("name")) or {}):
                report.fail(label, obj, f"{at}.volumeMounts", f"container {name} needs an emptyDir mounted at /tmp (the root filesystem is read-only)")
            for j, e in enumerate(c.get("env") or []):
                if "value" in e:
                    for problem in secret_findings(e.get("name", ""), e.get("value")):
                        report.fail(label, obj, f"{at}.env[{j}] ({e.get('name')})", f"{problem}: take it from a Secret (valueFrom.secretKeyRef)")


# ---------------------------------------------------------------------------------------
# ymera containers: probes on the routes that exist, listening where probed

HEALTH_FOR_PROBE = {"startupProbe": "/health/startup", "livenessProbe": "/health", "readinessProbe": "/health/ready"}


def health_routes(repo):
    """Routes the health router defines (crates/serve/src/health.rs), or None."""
    path = repo / "crates" / "serve" / "src" / "health.rs" if repo else None
    if not path or not path.exists():
        return None
    return set(re.findall(r'\.route\(\s*"(/[^"]*)"', path.read_text()))


def ymera_settings(objs, ns):
    """ymera.yaml of the render's ymera-config ConfigMap in namespace ns (parsed), and the
    ymera-env ConfigMap's data."""
    cfg, env = None, {}
    for o in objs:
        if o.get("kind") != "ConfigMap" or (o.get("metadata") or {}).get("namespace") != ns:
            continue
        data = o.get("data") or {}
        if "ymera.yaml" in data:
            try:
                cfg = (load_all(data["ymera.yaml"]) or [None])[0] or {}
            except yaml.YAMLError:
                cfg = {}
        if (o["metadata"].get("name") or "").startswith("ymera-env"):
            env.update(data)
    return cfg, env


def check_ymera_container(report, label, obj, objs, routes):
    ns = (obj.get("metadata") or {}).get("namespace")
    cfg, env_cm = ymera_settings(objs, ns)
    for i, c in enumerate(pod_spec(obj).get("containers") or []):
        image = c.get("image") or ""
        if not re.search(r"(^|/)ymera(:|@|$)", image):
            continue
        at = f"spec.template.spec.containers[{i}]"
        args = c.get("args") or c.get("command") or []
        verb = next((a for a in args if a in ("serve", "run")), None)
        if verb is None:
            report.fail(label, obj, f"{at}.args", f"a ymera container runs neither `serve` nor `run`: {args}")
            continue
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        for probe, route in HEALTH_FOR_PROBE.items():
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != route:
                report.fail(label, obj, f"{at}.{probe}.httpGet.path", f"should be {route}, is {get.get('path')}")
            if routes is not None and get.get("path") not in routes:
                report.fail(label, obj, f"{at}.{probe}.httpGet.path", f"{get.get('path')} is not a route of crates/serve/src/health.rs ({', '.join(sorted(routes))})")
        # where the process listens: env > ymera-env ConfigMap > ymera.yaml > default
        section = "serve" if verb == "serve" else "run"
        default = "127.0.0.1:8080" if verb == "serve" else "127.0.0.1:9464"
        var = f"YMERA__{section.upper()}__LISTEN"
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        listen = env.get(var) or env_cm.get(var) or ((cfg or {}).get(section) or {}).get("listen") or default
        host, _, port = str(listen).rpartition(":")
        if host not in ("0.0.0.0", "[::]", "::"):
            report.fail(label, obj, f"{at} ({section}.listen)", f"listens on {listen}: probes and Services cannot reach a loopback address; set {var}=0.0.0.0:{port or '...'}")
        probe_port = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("port")
        probe_port = ports.get(probe_port, probe_port)
        if port and str(probe_port) != port:
            report.fail(label, obj, f"{at}.readinessProbe.httpGet.port", f"probes port {probe_port} but {section}.listen is {listen}")
        if port.isdigit() and int(port) not in ports.values():
            report.fail(label, obj, f"{at}.ports", f"no containerPort {port} ({section}.listen {listen})")


# ---------------------------------------------------------------------------------------
# ymera.yaml against the settings the binary accepts (crates/cli/src/settings.rs)


def settings_structs(repo):
    """{struct name: {field: type}} parsed from settings.rs (its structs are all
    deny_unknown_fields, so a key that is no field stops the binary with exit 78)."""
    path = repo / "crates" / "cli" / "src" / "settings.rs" if repo else None
    if not path or not path.exists():
        return None
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", path.read_text(), re.S):
        fields = {}
        pending_rename = None
        for line in m.group(2).splitlines():
            line = line.strip()
            rename = re.search(r'#\[serde\(.*\brename\s*=\s*"([^"]+)"', line)
            if rename:
                pending_rename = rename.group(1)
            fm = re.match(r"pub (\w+)\s*:\s*(.+?),?\s*(//.*)?$", line)
            if fm:
                fields[pending_rename or fm.group(1)] = fm.group(2).strip()
                pending_rename = None
        structs[m.group(1)] = fields
    return structs


def settings_type(typ):
    typ = re.sub(r"\b(?:\w+::)+", "", typ.strip())  # std::collections::BTreeMap -> BTreeMap
    m = re.match(r"(?:Option|Box)<(.*)>$", typ)
    return settings_type(m.group(1)) if m else typ


def unknown_setting(structs, parts):
    """None when the key path (["auth", "jwt", "issuer"]) is a setting, else why not."""
    struct = "Settings"
    for i, part in enumerate(parts):
        fields = structs.get(struct)
        if fields is None:
            return None  # a type defined outside settings.rs: not checked deeper
        if part not in fields:
            return f"`{'.'.join(parts[:i + 1])}` is not a field of {struct} in crates/cli/src/settings.rs"
        typ = settings_type(fields[part])
        mapped = re.match(r"(?:BTreeMap|HashMap|IndexMap)<\s*String\s*,\s*(.+)>$", typ)
        if mapped:
            if i + 1 < len(parts):
                rest = unknown_setting({**structs, "Settings": {"_": mapped.group(1)}}, ["_"] + parts[i + 2:])
                return rest and rest.replace("`_", f"`{'.'.join(parts[:i + 2])}")
            return None
        struct = typ
    return None


def check_settings(report, label, cm, structs):
    """ymera.yaml's keys, and YMERA__SECTION__KEY variables in a ConfigMap, against the
    settings the binary accepts."""
    data = cm.get("data") or {}
    for key in data:
        if key.startswith("YMERA__"):
            why = unknown_setting(structs, key[len("YMERA__"):].lower().split("__"))
            if why:
                report.fail(label, cm, f"data.{key}", f"unknown setting: {why}; ymera would exit 78")
    if "ymera.yaml" not in data:
        return
    try:
        cfg = (load_all(data["ymera.yaml"]) or [None])[0] or {}
    except yaml.YAMLError:
        return  # reported by check_configmap

    def walk(node, parts):
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            why = unknown_setting(structs, parts + [str(key)])
            if why:
                report.fail(label, cm, f"data.ymera.yaml: {'.'.join(parts + [str(key)])}", f"unknown setting: {why}; ymera would exit 78")
            elif isinstance(value, dict):
                walk(value, parts + [str(key)])

    walk(cfg, [])


# ---------------------------------------------------------------------------------------
# references between objects, selectors, ports


def index(objs):
    return {(o.get("kind"), (o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")): o for o in objs}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(report, label, objs):
    idx = index(objs)
    for o in objs:
        ns = (o.get("metadata") or {}).get("namespace")
        if o.get("kind") in WORKLOAD_KINDS:
            spec = pod_spec(o)
            refs = []
            sa = spec.get("serviceAccountName")
            if sa:
                refs.append(("ServiceAccount", sa, "spec.template.spec.serviceAccountName", None))
            for v in spec.get("volumes") or []:
                if "configMap" in v:
                    refs.append(("ConfigMap", v["configMap"].get("name"), f"volumes.{v.get('name')}", None))
                if "secret" in v:
                    refs.append(("Secret", v["secret"].get("secretName"), f"volumes.{v.get('name')}", None))
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                for e in c.get("envFrom") or []:
                    if "configMapRef" in e:
                        refs.append(("ConfigMap", e["configMapRef"].get("name"), f"containers.{c.get('name')}.envFrom", None))
                    if "secretRef" in e:
                        refs.append(("Secret", e["secretRef"].get("name"), f"containers.{c.get('name')}.envFrom", None))
                for e in c.get("env") or []:
                    vf = e.get("valueFrom") or {}
                    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        if key in vf:
                            refs.append((kind, vf[key].get("name"), f"containers.{c.get('name')}.env.{e.get('name')}", vf[key].get("key")))
            for kind, name, field, key in refs:
                target = idx.get((kind, ns, name))
                if target is None:
                    report.fail(label, o, field, f"refers to {kind} {name}, which the render does not contain")
                elif key and key not in (target.get("data") or {}) and key not in (target.get("stringData") or {}):
                    report.fail(label, o, field, f"{kind} {name} has no key {key}")
        if o.get("kind") == "Service":
            sel = (o.get("spec") or {}).get("selector") or {}
            pods = [w for w in objs if w.get("kind") in WORKLOAD_KINDS and (w.get("metadata") or {}).get("namespace") == ns and matches(sel, pod_labels(w))]
            if not pods:
                report.fail(label, o, "spec.selector", f"selects no workload's pods: {sel}")
            for i, p in enumerate((o.get("spec") or {}).get("ports") or []):
                tp = p.get("targetPort", p.get("port"))
                named = {cp.get("name"): cp.get("containerPort") for w in pods for c in pod_spec(w).get("containers") or [] for cp in c.get("ports") or []}
                if pods and tp not in named and tp not in named.values():
                    report.fail(label, o, f"spec.ports[{i}].targetPort", f"{tp} is no container port of the selected pods")
        if o.get("kind") in ("PodDisruptionBudget", "NetworkPolicy"):
            field = "spec.selector" if o["kind"] == "PodDisruptionBudget" else "spec.podSelector"
            sel = (((o.get("spec") or {}).get("selector" if o["kind"] == "PodDisruptionBudget" else "podSelector")) or {}).get("matchLabels") or {}
            if not any(w.get("kind") in WORKLOAD_KINDS and (w.get("metadata") or {}).get("namespace") == ns and matches(sel, pod_labels(w)) for w in objs):
                report.fail(label, o, f"{field}.matchLabels", f"selects no workload's pods: {sel}")
        if o.get("kind") == "TriggerAuthentication":
            for i, ref in enumerate((o.get("spec") or {}).get("secretTargetRef") or []):
                target = idx.get(("Secret", ns, ref.get("name")))
                if target is None:
                    report.fail(label, o, f"spec.secretTargetRef[{i}].name", f"refers to Secret {ref.get('name')}, which the render does not contain")
                elif ref.get("key") not in (target.get("data") or {}) and ref.get("key") not in (target.get("stringData") or {}):
                    report.fail(label, o, f"spec.secretTargetRef[{i}].key", f"Secret {ref.get('name')} has no key {ref.get('key')}")
        if o.get("kind") == "ScaledObject":
            for i, t in enumerate((o.get("spec") or {}).get("triggers") or []):
                ref = t.get("authenticationRef")
                if ref and ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication" and ("TriggerAuthentication", ns, ref.get("name")) not in idx:
                    report.fail(label, o, f"spec.triggers[{i}].authenticationRef", f"TriggerAuthentication {ref.get('name')} is not in namespace {ns}")


# ---------------------------------------------------------------------------------------
# KEDA: the forecast wiring

FORMULA_FUNCTIONS = {"max", "min", "abs", "ceil", "floor", "round", "int", "float", "len", "sum", "mean", "median", "true", "false", "nil", "and", "or", "not", "in"}
FORECAST_PATH = re.compile(r"^/v1/autoscale/([^/]+)/forecast$")


def as_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def check_scaledobject(report, label, so, objs):
    spec = so.get("spec") or {}
    triggers = spec.get("triggers") or []
    names = [t.get("name") for t in triggers]
    mods = (spec.get("advanced") or {}).get("scalingModifiers")
    if mods:
        formula = mods.get("formula") or ""
        idents = {m.group(1) for m in re.finditer(r"\b([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", formula)} - FORMULA_FUNCTIONS
        for i, n in enumerate(names):
            if not n:
                report.fail(label, so, f"spec.triggers[{i}].name", "every trigger needs a name when scalingModifiers combine them")
            elif not re.search(rf"\b{re.escape(n)}\b", formula):
                report.fail(label, so, "spec.advanced.scalingModifiers.formula", f"does not use trigger `{n}`: {formula!r}")
        for ident in sorted(idents - set(names)):
            report.fail(label, so, "spec.advanced.scalingModifiers.formula", f"`{ident}` is not a trigger name ({', '.join(map(str, names))})")
        for field in ("target", "formula"):
            if not mods.get(field):
                report.fail(label, so, f"spec.advanced.scalingModifiers.{field}", "is required")
    if spec.get("fallback"):
        # KEDA only applies fallback to AverageValue metrics (and rejects an empty
        # metricType at admission, kedacore/keda#6066)
        for i, t in enumerate(triggers):
            if t.get("metricType") != "AverageValue":
                report.fail(label, so, f"spec.triggers[{i}].metricType", f"must be AverageValue when fallback is set (is {t.get('metricType')})")
        if mods and mods.get("metricType") != "AverageValue":
            report.fail(label, so, "spec.advanced.scalingModifiers.metricType", "must be AverageValue when fallback is set")
        for f in ("failureThreshold", "replicas"):
            if not isinstance(spec["fallback"].get(f), int) or spec["fallback"][f] < 1:
                report.fail(label, so, f"spec.fallback.{f}", "must be a positive integer")
    target = as_float((mods or {}).get("target"))
    ns = (so.get("metadata") or {}).get("namespace")
    for i, t in enumerate(triggers):
        md = t.get("metadata") or {}
        at = f"spec.triggers[{i}]"
        if t.get("type") == "prometheus" and mods and as_float(md.get("threshold")) != target:
            report.fail(label, so, f"{at}.metadata.threshold", f"{md.get('threshold')} differs from scalingModifiers.target {mods.get('target')}: both are the per-replica capacity")
        if t.get("type") != "metrics-api":
            continue
        url = urllib.parse.urlsplit(md.get("url") or "")
        m = FORECAST_PATH.match(url.path)
        if not m:
            continue  # some other API
        service = m.group(1)
        query = urllib.parse.parse_qs(url.query)
        if service == "ymera-run":
            check_ymera_run_scaling(report, label, so, at, query)
        for p in ("metric", "horizon", "step", "lead", "q"):
            if p not in query:
                report.fail(label, so, f"{at}.metadata.url", f"forecast URL lacks the `{p}` parameter")
        if md.get("valueLocation") != "keda.value":
            report.fail(label, so, f"{at}.metadata.valueLocation", f"must be keda.value (is {md.get('valueLocation')})")
        if md.get("authMode") != "bearer" or not t.get("authenticationRef"):
            report.fail(label, so, f"{at}.metadata.authMode", "the forecast endpoint needs `authMode: bearer` and an authenticationRef (an autoscaler API key)")
        if t.get("metricType", "AverageValue") != "AverageValue":
            report.fail(label, so, f"{at}.metricType", "keda.value is a load, not a replica count: use AverageValue so targetValue is the per-replica capacity")
        if mods and as_float(md.get("targetValue")) != target:
            report.fail(label, so, f"{at}.metadata.targetValue", f"{md.get('targetValue')} differs from scalingModifiers.target {mods.get('target')}")
        # the host is ymera-serve.<ns>.svc...: that Service and its ymera.yaml, when rendered here
        host = (url.hostname or "").split(".")
        if len(host) >= 2 and url.port and any(o.get("kind") == "Namespace" or (o.get("metadata") or {}).get("namespace") == host[1] for o in objs):
            svc = next((o for o in objs if o.get("kind") == "Service" and o["metadata"].get("name") == host[0] and o["metadata"].get("namespace") == host[1]), None)
            if svc is None:
                report.fail(label, so, f"{at}.metadata.url", f"no Service {host[0]} in namespace {host[1]}")
            elif url.port not in [p.get("port") for p in svc["spec"].get("ports") or []]:
                report.fail(label, so, f"{at}.metadata.url", f"Service {host[1]}/{host[0]} has no port {url.port}")
            cfg, _ = ymera_settings(objs, host[1])
            svc_cfg = (((cfg or {}).get("autoscale") or {}).get("services") or {}).get(service)
            if cfg is not None and svc_cfg is None:
                report.fail(label, so, f"{at}.metadata.url", f"ymera.yaml in {host[1]} has no autoscale.services.{service}")
            elif svc_cfg:
                pairs = [
                    ("capacity_per_replica", svc_cfg.get("capacity_per_replica"), f"{at}.metadata.targetValue", md.get("targetValue")),
                    ("min_replicas", svc_cfg.get("min_replicas"), "spec.minReplicaCount", spec.get("minReplicaCount")),
                    ("max_replicas", svc_cfg.get("max_replicas"), "spec.maxReplicaCount", spec.get("maxReplicaCount")),
                ]
                for setting, want, field, have in pairs:
                    if want is not None and as_float(want) != as_float(have):
                        report.fail(label, so, field, f"{have} differs from autoscale.services.{service}.{setting} = {want} in ymera.yaml")
                lead = svc_cfg.get("lead")
                if lead and query.get("lead") and query["lead"][0] != lead:
                    report.fail(label, so, f"{at}.metadata.url", f"lead={query['lead'][0]} differs from autoscale.services.{service}.lead = {lead}")


def check_ymera_run_scaling(report, label, so, at, query):
    """`ymera run` scaled on its own input: one trigger (KEDA takes the maximum over
    triggers, which would undo the lag folded into keda.value), the ymera-run Deployment
    as target, and HPA behaviour that jumps straight to the even counts ymera answers."""
    spec = so.get("spec") or {}
    if len(spec.get("triggers") or []) != 1 or (spec.get("advanced") or {}).get("scalingModifiers"):
        report.fail(label, so, "spec.triggers", "ymera-run scales on one trigger, ymera's forecast with the lag folded in (KEDA takes the maximum over triggers)")
    target = spec.get("scaleTargetRef") or {}
    if target.get("kind", "Deployment") != "Deployment" or target.get("name") != "ymera-run":
        report.fail(label, so, "spec.scaleTargetRef", f"the ymera-run forecast scales the Deployment ymera-run, not {target.get('kind', 'Deployment')} {target.get('name')}")
    if query.get("metric", ["records_per_s"])[0] != "records_per_s":
        report.fail(label, so, f"{at}.metadata.url", "ymera-run's metric is records_per_s")
    most = spec.get("maxReplicaCount")
    behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}
    for direction in ("scaleUp", "scaleDown"):
        rules = behavior.get(direction) or {}
        pods = [p.get("value") for p in rules.get("policies") or [] if p.get("type") == "Pods"]
        if rules.get("selectPolicy") in ("Min", "Disabled") or not isinstance(most, int) or not any(isinstance(v, int) and v >= most for v in pods):
            report.fail(label, so, f"spec.advanced.horizontalPodAutoscalerConfig.behavior.{direction}",
                        f"needs a Pods policy of at least maxReplicaCount ({most}) so the HPA goes straight to the count ymera answers, not through counts that split the partitions unevenly")
    fallback = (spec.get("fallback") or {}).get("replicas")
    for field, n in (("spec.fallback.replicas", fallback), ("spec.minReplicaCount", spec.get("minReplicaCount", 0))):
        if isinstance(n, int) and n > 0 and isinstance(most, int) and most % n:
            report.fail(label, so, field, f"{n} does not divide maxReplicaCount {most} (the partition count)")


# ---------------------------------------------------------------------------------------
# the Grafana dashboard and the pipelines copy


def metric_names_in_code(repo):
    """Every "ymera_..." string literal in the Rust code: the metric names emitted
    (counter!/gauge!/histogram!, or names kept in consts), plus a few table names that
    are no metric and do no harm here."""
    names = set()
    for path in (repo / "crates").rglob("*.rs"):
        names.update(re.findall(r'"(ymera_[a-z0-9_]+)"', path.read_text(errors="replace")))
    return names


def check_dashboard(report, path, repo):
    label = str(path)
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        report.fail(label, None, "", f"not valid JSON: {e}")
        return
    for field in ("uid", "title", "schemaVersion", "panels", "templating"):
        if field not in dash:
            report.fail(label, None, field, "missing")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds_vars = [n for n, v in variables.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not ds_vars:
        report.fail(label, None, "templating.list", "no datasource variable of type prometheus")
    known = metric_names_in_code(repo) if repo and (repo / "crates").exists() else None
    uids = set()

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dash.get("panels") or []):
        where = f"panels[id={p.get('id')}] {p.get('title')!r}"
        if p.get("id") in uids:
            report.fail(label, None, where, "duplicate panel id")
        uids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        ds = (p.get("datasource") or {}).get("uid", "")
        if not any(ds in (f"${n}", f"${{{n}}}") for n in ds_vars):
            report.fail(label, None, f"{where}.datasource", f"should use the datasource variable, is {ds!r}")
        for t in p.get("targets") or []:
            expr = t.get("expr") or ""
            if not expr:
                report.fail(label, None, f"{where}.targets", "a target without expr")
            for metric in sorted(set(re.findall(r"\b(ymera_[a-z0-9_]+)", expr))):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if known is not None and metric not in known and base not in known:
                    report.fail(label, None, f"{where}.targets", f"metric {metric} is not emitted anywhere in crates/ (invented or renamed?)")


def check_alert_rules(report, path, repo):
    """A Prometheus rule file: groups with unique names, each rule an alert with expr,
    `for`, a severity label and a summary, and every ymera_* metric emitted by crates/."""
    label = str(path)
    try:
        doc = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        report.fail(label, None, "", f"not YAML: {e}")
        return
    groups = (doc or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        report.fail(label, None, "groups", "a rule file needs a non-empty list of groups")
        return
    known = metric_names_in_code(repo) if repo and (repo / "crates").exists() else None
    seen_groups, seen_alerts = set(), set()
    for gi, g in enumerate(groups):
        name = g.get("name")
        if not name or name in seen_groups:
            report.fail(label, None, f"groups[{gi}].name", f"missing or repeated ({name!r})")
        seen_groups.add(name)
        for ri, r in enumerate(g.get("rules") or []):
            where = f"groups[{gi}].rules[{ri}] {r.get('alert')!r}"
            extra = set(r) - {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            if extra:
                report.fail(label, None, where, f"unknown keys {sorted(extra)}")
            if not r.get("alert"):
                report.fail(label, None, where, "not an alerting rule (no `alert`)")
            elif r["alert"] in seen_alerts:
                report.fail(label, None, where, "alert name repeated")
            seen_alerts.add(r.get("alert"))
            expr = str(r.get("expr") or "")
            if not expr:
                report.fail(label, None, f"{where}.expr", "missing")
            if not re.fullmatch(r"\d+[smhd]", str(r.get("for") or "")):
                report.fail(label, None, f"{where}.for", f"should be a duration like 10m, is {r.get('for')!r}")
            if (r.get("labels") or {}).get("severity") not in ("info", "warning", "critical"):
                report.fail(label, None, f"{where}.labels.severity", "must be info, warning or critical")
            if not (r.get("annotations") or {}).get("summary"):
                report.fail(label, None, f"{where}.annotations.summary", "missing")
            if expr.count("(") != expr.count(")"):
                report.fail(label, None, f"{where}.expr", "unbalanced parentheses")
            for metric in sorted(set(re.findall(r"\b(ymera_[a-z0-9_]+)", expr))):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if known is not None and metric not in known and base not in known:
                    report.fail(label, None, f"{where}.expr", f"metric {metric} is not emitted anywhere in crates/ (invented or renamed?)")


def check_pipelines_copy(report, root, repo):
    if not repo or not (repo / "pipelines").is_dir():
        return
    for path in sorted((root / "base" / "pipelines").glob("*.y*ml")):
        original = repo / "pipelines" / path.name
        if original.exists() and original.read_bytes() != path.read_bytes():
            report.fail(f"base/pipelines/{path.name}", None, "", f"differs from pipelines/{path.name}: copy it again (cp pipelines/{path.name} deploy/base/pipelines/)")


def workspace_version(repo):
    if not repo or not (repo / "Cargo.toml").exists():
        return None
    m = re.search(r'(?ms)^\[workspace\.package\].*?^version\s*=\s*"([^"]+)"', (repo / "Cargo.toml").read_text())
    return m.group(1) if m else None


def check_dockerfile(report, root, repo, images):
    """deploy/Dockerfile: multi-stage; the last stage distroless (no shell, so no RUN and an
    exec-form ENTRYPOINT of /usr/local/bin/ymera), a numeric non-root USER, the workspace
    version as its OCI version label; and every ymera image the manifests render is
    registry.example.com/ymera/ymera at that version (base exactly, overlays as a prefix)."""
    path = root / "Dockerfile"
    label = "Dockerfile"
    if not path.exists():
        report.fail(label, None, "", "deploy/Dockerfile is missing: nothing builds the image the manifests run")
        return
    lines, cont = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cont += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(cont)
            cont = ""
    stages, current = [], None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            current = {"from": rest.split()[0], "ops": []}
            stages.append(current)
        elif current is not None:
            current["ops"].append((word, rest.strip()))
    if len(stages) < 2:
        report.fail(label, None, "FROM", "must be multi-stage: a build stage and a run stage")
        return
    final = stages[-1]
    if not final["from"].startswith("gcr.io/distroless/"):
        report.fail(label, None, "FROM (last)", f"the run stage must be distroless (no shell at run time), is {final['from']}")
    ops = final["ops"]
    if any(w == "RUN" for w, _ in ops):
        report.fail(label, None, "RUN (last stage)", "the run stage has no shell: RUN belongs in the build stage")
    users = [r for w, r in ops if w == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        report.fail(label, None, "USER", f"the run stage needs a numeric non-root USER (uid:gid), has {users[-1] if users else 'none'}")
    entry = [r for w, r in ops if w == "ENTRYPOINT"]
    try:
        argv = json.loads(entry[-1]) if entry else None
    except json.JSONDecodeError:
        argv = None
    if not isinstance(argv, list) or not argv or argv[0] != "/usr/local/bin/ymera":
        report.fail(label, None, "ENTRYPOINT", "must be the exec form [\"/usr/local/bin/ymera\", …] (no shell to run a string)")
    if not any(w == "COPY" and "--from=" in r and r.rstrip().endswith("/usr/local/bin/ymera") for w, r in ops):
        report.fail(label, None, "COPY", "the run stage must copy the built binary to /usr/local/bin/ymera")
    build = " ".join(r for st in stages[:-1] for w, r in st["ops"] if w == "RUN")
    for needed in ("cargo build --release", "--locked", "strip"):
        if needed not in build:
            report.fail(label, None, "RUN (build stage)", f"the build must use `{needed}`")
    version = workspace_version(repo)
    labels = " ".join(r for w, r in ops if w == "LABEL")
    m = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)
    if version and (not m or m.group(1) != version):
        report.fail(label, None, "LABEL org.opencontainers.image.version", f"must be the workspace version {version}, is {m.group(1) if m else 'missing'}")
    for target, image in images:
        name, _, tag = image.rpartition(":")
        if name != "registry.example.com/ymera/ymera":
            report.fail(target, None, "image", f"{image}: the Dockerfile's image is registry.example.com/ymera/ymera")
        elif version and (tag != version if target == "base" else not tag.startswith(version)):
            report.fail(target, None, "image", f"{image}: the tag must be the workspace version {version}" + ("" if target == "base" else " (or start with it)"))


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=pathlib.Path, help="the kustomize root (deploy/)")
    ap.add_argument("--schemas", type=pathlib.Path, help="schema directory (default ROOT/schemas)")
    ap.add_argument("--repo", type=pathlib.Path, help="repository root, for health routes, settings and metric names")
    ap.add_argument("--overlay", action="append", default=[], help="labels whose render must be complete (references resolved)")
    ap.add_argument("--check-schemas", action="store_true", help="validate the schemas themselves against the meta-schema first")
    ap.add_argument("rendered", nargs="+", help="LABEL=FILE")
    args = ap.parse_args()

    report = Report()
    validators = load_schemas(args.schemas or args.root / "schemas", args.check_schemas)
    repo = args.repo
    routes = health_routes(repo)
    structs = settings_structs(repo)
    lines = []
    images = []
    for item in args.rendered:
        label, _, file = item.partition("=")
        before = len(report.failures)
        try:
            objs = [o for o in load_all(pathlib.Path(file).read_text()) if o]
        except yaml.YAMLError as e:
            report.fail(label, None, "", f"rendered output is not YAML: {e}")
            continue
        service_accounts = {}
        for o in objs:
            check_schema(report, label, o, validators)
            if o.get("kind") == "ServiceAccount":
                service_accounts[o["metadata"].get("name")] = o.get("automountServiceAccountToken")
                if o.get("automountServiceAccountToken") is not False:
                    report.fail(label, o, "automountServiceAccountToken", "must be false")
            if o.get("kind") == "ConfigMap":
                check_configmap(report, label, o)
                if structs is not None:
                    check_settings(report, label, o, structs)
        for o in objs:
            containers = (pod_spec(o).get("containers") or []) if o.get("kind") in WORKLOAD_KINDS else []
            for c in containers:
                if re.search(r"(^|/)ymera(:|@|$)", c.get("image") or ""):
                    images.append((label, c["image"]))
            if o.get("kind") in WORKLOAD_KINDS:
                check_workload(report, label, o, service_accounts)
                check_ymera_container(report, label, o, objs, routes)
            if o.get("kind") == "ScaledObject":
                check_scaledobject(report, label, o, objs)
        if label in args.overlay:
            check_references(report, label, objs)
        kinds = collections.Counter(o.get("kind") for o in objs)
        if len(report.failures) == before:
            summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            lines.append(f"ok   {label}: {len(objs)} objects valid ({summary})")
    for path in sorted((args.root / "grafana").glob("*.json")):
        check_dashboard(report, path, repo)
    rule_files = sorted((args.root / "prometheus").glob("*.y*ml"))
    for path in rule_files:
        check_alert_rules(report, path, repo)
    if rule_files and not report.failures:
        lines.append(f"ok   prometheus: {len(rule_files)} rule file(s) valid")
    check_pipelines_copy(report, args.root, repo)
    before = len(report.failures)
    check_dockerfile(report, args.root, repo, images)
    if len(report.failures) == before:
        lines.append(f"ok   Dockerfile: multi-stage, distroless non-root run stage; {len(images)} ymera image reference(s) at the workspace version")

    for line in report.failures:
        print(line)
    for line in lines:
        print(line)
    if report.failures:
        print(f"validate-deploy: {len(report.failures)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
