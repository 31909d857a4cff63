#!/usr/bin/env python3
"""Semantic checks of a `helm template` rendering of helm/anya, beyond schema validation.

kubernetes-validate proves each object is well-formed; this proves the objects fit together and
keep anya's contract: selectors match the pods, named ports exist, probes hit /health and /ready,
the grace period covers preStop + drain, the rendered anya.yaml holds only keys anya knows and
agrees with the container's ports and mounts, every container is locked down, and secrets appear
only where asked for.

    check_manifests.py RENDERED.yaml [--config-keys config/anya.yaml] [--write-config FILE]
                       [--expect-config section.key=VALUE]... [--expect-kind KIND]...
                       [--expect-gpu]

Exit 0 when every check holds, else 1 with one line per problem. Used by scripts/check-deploy.sh.
"""

import argparse
import sys

import yaml

# Keys the chart may render that config/anya.yaml may not list yet (drain and Redis are there
# now; jwt_secret_file comes with the auth work). deny_unknown_fields in anya makes any other key
# a startup error.
EXTRA_CONFIG_KEYS = {
    "server.drain_timeout_s",
    "cache.redis_url",
    "security.jwt_secret_file",
}


class UniqueKeyLoader(yaml.SafeLoader):
    """A loader that rejects duplicate mapping keys (which YAML silently resolves last-wins)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered")
    ap.add_argument("--config-keys", default="config/anya.yaml",
                    help="anya's documented config file: its keys are the known keys")
    ap.add_argument("--write-config", help="write the ConfigMap's anya.yaml here")
    ap.add_argument("--expect-config", action="append", default=[],
                    help="section.key=VALUE (YAML scalar) the rendered anya.yaml must hold")
    ap.add_argument("--expect-kind", action="append", default=[],
                    help="a kind that must be rendered")
    ap.add_argument("--expect-gpu", action="store_true",
                    help="the rendering requests GPUs")
    args = ap.parse_args()

    problems = []
    bad = problems.append

    with open(args.rendered) as f:
        try:
            docs = [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d]
        except yaml.YAMLError as e:
            print(f"rendering does not parse: {e}")
            return 1

    by_kind = {}
    # The bundled Redis (cache.redis.bundled) is its own Deployment and Service: checked apart.
    redis_kinds = {}
    for d in docs:
        is_redis = d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == "redis"
        (redis_kinds if is_redis else by_kind).setdefault(d.get("kind"), []).append(d)
        md = d.get("metadata", {})
        labels = md.get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/managed-by"):
            if label not in labels:
                bad(f"{d['kind']}/{md.get('name')}: label {label} missing")

    for kind in args.expect_kind:
        if kind not in by_kind:
            bad(f"expected a {kind} in the rendering")

    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        bad(f"expected exactly one Deployment, found {len(deployments)}")
        print("\n".join(problems))
        return 1
    dep = deployments[0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    if not selector.items() <= pod_labels.items():
        bad("Deployment selector does not match its pod labels")
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    anya = containers.get("anya")
    if anya is None:
        bad("no container named anya")
        print("\n".join(problems))
        return 1
    ports = {p["name"]: p["containerPort"] for p in anya.get("ports", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in anya.get("volumeMounts", [])}

    # --- the rendered configuration -----------------------------------------------------------
    cms = [c for c in by_kind.get("ConfigMap", []) if "anya.yaml" in c.get("data", {})]
    if len(cms) != 1:
        bad(f"expected one ConfigMap with anya.yaml, found {len(cms)}")
        print("\n".join(problems))
        return 1
    config_text = cms[0]["data"]["anya.yaml"]
    config = yaml.load(config_text, Loader=UniqueKeyLoader) or {}
    flat = flatten(config)
    with open(args.config_keys) as f:
        known = set(flatten(yaml.safe_load(f))) | EXTRA_CONFIG_KEYS
    for key in sorted(set(flat) - known):
        bad(f"anya.yaml: key {key} is not a known anya config key")
    if args.write_config:
        with open(args.write_config, "w") as f:
            f.write(config_text)

    for item in args.expect_config:
        key, _, raw = item.partition("=")
        want = yaml.safe_load(raw)
        if flat.get(key) != want:
            bad(f"anya.yaml: {key} is {flat.get(key)!r}, expected {want!r}")

    if flat.get("server.host") != "0.0.0.0":
        bad("anya.yaml: server.host must be 0.0.0.0 in a pod")
    if ports.get("http") != flat.get("server.port"):
        bad(f"container port http {ports.get('http')} != server.port {flat.get('server.port')}")
    if flat.get("monitoring.enabled"):
        if ports.get("metrics") != flat.get("monitoring.metrics_port"):
            bad("container port metrics != monitoring.metrics_port")
    elif "metrics" in ports:
        bad("metrics port exposed while monitoring is disabled")
    models_dir = flat.get("model.models_dir")
    if str(models_dir).startswith("s3://"):
        # An S3 repository is mirrored into model.cache_dir: a writable mount of its own.
        cache_dir = flat.get("model.cache_dir")
        if cache_dir not in mounts or mounts[cache_dir].get("readOnly"):
            bad(f"model.cache_dir {cache_dir} is not a writable mount of the anya container")
    elif models_dir not in mounts or not mounts[models_dir].get("readOnly"):
        bad(f"model.models_dir {models_dir} is not a read-only mount of the anya container")
    cfg_mount = [m for m in anya.get("volumeMounts", []) if m["mountPath"] in anya.get("args", [])]
    if not cfg_mount:
        bad("the --config file in args is not a mounted path")

    # --- drain: grace period covers preStop + drain deadline ----------------------------------
    drain = flat.get("server.drain_timeout_s", 30)
    pre_stop = anya.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pre_stop[:1] != ["sleep"] or len(pre_stop) != 2:
        bad("anya preStop must be a sleep")
        sleep = 0
    else:
        sleep = int(pre_stop[1])
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is None or grace <= sleep + drain:
        bad(f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain {drain}")

    # --- probes -----------------------------------------------------------------------------------
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"),
                        ("startupProbe", "/ready")):
        p = anya.get(probe)
        if not p:
            bad(f"anya has no {probe}")
            continue
        get = p.get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ports:
            bad(f"{probe} must GET {path} on a named container port")
    startup = anya.get("startupProbe", {})
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 60:
        bad("startupProbe allows less than 60 s for model loading")

    # --- rollout ------------------------------------------------------------------------------
    ru = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
    if ru.get("maxUnavailable") not in (0, "0%"):
        bad("rolling update maxUnavailable must be 0 for zero-downtime updates")

    # --- security ---------------------------------------------------------------------------
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        bad("pod securityContext must set runAsNonRoot and seccompProfile RuntimeDefault")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False \
                or sc.get("readOnlyRootFilesystem") is not True \
                or "ALL" not in sc.get("capabilities", {}).get("drop", []):
            bad(f"container {c['name']}: needs allowPrivilegeEscalation false, "
                f"readOnlyRootFilesystem true, capabilities drop ALL")
        if "resources" not in c:
            bad(f"container {c['name']}: no resources")
    if "/tmp" not in mounts:
        bad("anya has no writable /tmp (the root filesystem is read-only)")
    if spec.get("automountServiceAccountToken") is not False:
        bad("pods must not mount a service account token")

    # --- auth and secrets -------------------------------------------------------------------
    secrets = by_kind.get("Secret", [])
    if flat.get("security.auth_required"):
        key_file = flat.get("security.jwt_secret_file", "")
        key_dir = key_file.rsplit("/", 1)[0]
        m = mounts.get(key_dir)
        if not m or "secret" not in volumes.get(m["name"], {}):
            bad(f"security.jwt_secret_file {key_file}: no Secret mounted at {key_dir}")
        else:
            items = volumes[m["name"]]["secret"].get("items", [])
            if key_file.rsplit("/", 1)[1] not in [i["path"] for i in items]:
                bad(f"the JWT Secret volume has no item at {key_file}")
    else:
        if "security.jwt_secret_file" in flat:
            bad("jwt_secret_file rendered while auth is off")
        if secrets:
            bad("a Secret is rendered while auth is off")

    # --- GPU ----------------------------------------------------------------------------------
    limits = anya.get("resources", {}).get("limits", {})
    gpu = any(k.endswith("/gpu") for k in limits)
    if args.expect_gpu:
        if not gpu:
            bad("GPU values: no GPU limit on the anya container")
        if flat.get("model.device") != "cuda":
            bad("GPU values: model.device is not cuda")
        if not anya["image"].split("@")[0].endswith("-cuda"):
            bad("GPU values: the image tag is not the CUDA one")
    elif gpu:
        bad("a GPU is requested without gpu.enabled")

    # --- the bundled Redis ------------------------------------------------------------------------
    if redis_kinds:
        rdeps, rsvcs = redis_kinds.get("Deployment", []), redis_kinds.get("Service", [])
        if len(rdeps) != 1 or len(rsvcs) != 1:
            bad("the bundled Redis needs exactly one Deployment and one Service")
        else:
            rsel = rdeps[0]["spec"]["selector"]["matchLabels"]
            if rsvcs[0]["spec"]["selector"] != rsel:
                bad("the bundled Redis Service does not select its Deployment")
            if rsel.items() <= pod_labels.items():
                bad("the bundled Redis selector also selects the anya pods")
            want = f"redis://{rsvcs[0]['metadata']['name']}:6379/0"
            if flat.get("cache.redis_url") != want:
                bad(f"cache.redis_url is {flat.get('cache.redis_url')!r}, not the bundled {want}")

    # --- objects that point at each other ---------------------------------------------------
    name = dep["metadata"]["name"]
    services = by_kind.get("Service", [])
    if len(services) != 1:
        bad(f"expected one Service, found {len(services)}")
    for svc in services:
        if svc["spec"]["selector"] != selector:
            bad("Service selector differs from the Deployment selector")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports:
                bad(f"Service port {p['name']} targets {p['targetPort']}, not a container port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if pdb["spec"]["selector"]["matchLabels"] != selector:
            bad("PodDisruptionBudget selector differs from the Deployment selector")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", name):
            bad("HPA does not target the Deployment")
        if "replicas" in dep["spec"]:
            bad("Deployment sets replicas while an HPA manages them")
        if not hpa["spec"].get("metrics"):
            bad("HPA has no metrics")
    for sm in by_kind.get("ServiceMonitor", []):
        want = sm["spec"]["selector"]["matchLabels"].items()
        svc_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        if not any(want <= s["metadata"]["labels"].items() for s in services):
            bad("ServiceMonitor selector matches no Service")
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") not in svc_ports:
                bad(f"ServiceMonitor endpoint port {ep.get('port')} is not a Service port")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                b = p["backend"]["service"]
                if b["name"] not in [s["metadata"]["name"] for s in services]:
                    bad("Ingress backend is not the chart's Service")
    for p in by_kind.get("Pod", []):
        if selector.items() <= p["metadata"].get("labels", {}).items():
            bad(f"Pod {p['metadata']['name']} carries the server's selector labels")

    if problems:
        print("\n".join(problems))
        return 1
    kinds = ", ".join(f"{k} x{len(v)}" if len(v) > 1 else k for k, v in sorted(by_kind.items()))
    print(f"consistent: {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
