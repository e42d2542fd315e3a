"""Checks what the Kubernetes schemas cannot in a rendered overlay of
deploy/kubernetes: that the pieces point at each other. Service and InferencePool
selectors pick the pods they are meant for, ports and port names exist, the ServiceMonitor
finds the Service, the replicas' Redis URL names the Redis Service, their registry URL
names the PostgreSQL Service, user, database and password Secret, the endpoint picker
names the pool, and the alert rules and the picker read only metrics Minerva exports
(METRICS: a scraped /metrics text).

    python consistency.py RENDERED.yaml METRICS.txt
"""
import re
import sys

import yaml


def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def main(rendered, metrics_file):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    workloads = {**deployments, **by_kind.get("StatefulSet", {})}
    minerva = deployments.get("minerva") or fail("no minerva Deployment")
    pod_labels = minerva["spec"]["template"]["metadata"]["labels"]
    container = minerva["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    checks = 0

    for name, workload in workloads.items():
        template = workload["spec"]["template"]["metadata"]["labels"]
        if not selects(workload["spec"]["selector"]["matchLabels"], template):
            fail(f"{workload['kind']} {name}'s selector does not match its own pods")
        checks += 1

    for name, service in by_kind.get("Service", {}).items():
        targets = [d for d in workloads.values()
                   if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        if len(targets) != 1:
            fail(f"Service {name} selects {len(targets)} workloads")
        names = {p["name"] for p in targets[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for port in service["spec"]["ports"]:
            if isinstance(port["targetPort"], str) and port["targetPort"] not in names:
                fail(f"Service {name} targets port {port['targetPort']!r}, not one of {sorted(names)}")
        checks += 1

    for name, monitor in by_kind.get("ServiceMonitor", {}).items():
        found = [s for s in by_kind["Service"].values()
                 if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
                 and s["metadata"]["name"] == "minerva"]
        if not found:
            fail(f"ServiceMonitor {name} selects no minerva Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in {p["name"] for p in found[0]["spec"]["ports"]}:
                fail(f"ServiceMonitor {name} scrapes port {endpoint['port']!r}, which the Service lacks")
        checks += 1

    for name, pool in by_kind.get("InferencePool", {}).items():
        spec = pool["spec"]
        if not selects(spec["selector"]["matchLabels"], pod_labels):
            fail(f"InferencePool {name} does not select the minerva pods")
        for other in deployments.values():
            if other is not minerva and selects(spec["selector"]["matchLabels"],
                                                other["spec"]["template"]["metadata"]["labels"]):
                fail(f"InferencePool {name} also selects {other['metadata']['name']}'s pods")
        if [p["number"] for p in spec["targetPorts"]] != [ports["http"]]:
            fail(f"InferencePool {name} targets {spec['targetPorts']}, the pods listen on {ports['http']}")
        picker = by_kind["Service"].get(spec["endpointPickerRef"]["name"]) or fail("no picker Service")
        if spec["endpointPickerRef"]["port"]["number"] not in [p["port"] for p in picker["spec"]["ports"]]:
            fail(f"InferencePool {name}'s picker port is not its Service's")
        epp = deployments["minerva-epp"]["spec"]["template"]["spec"]["containers"][0]["args"]
        if f"--pool-name={name}" not in epp:
            fail(f"the endpoint picker does not watch pool {name}: {epp}")
        checks += 1

    url = env.get("MINERVA_EMBEDDING_CACHE")
    if url:
        match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url) or fail(f"bad cache URL {url}")
        service = by_kind["Service"].get(match.group(1)) or fail(f"{url} names no Service")
        if int(match.group(2)) not in [p["port"] for p in service["spec"]["ports"]]:
            fail(f"{url}: the Service {match.group(1)} has no port {match.group(2)}")
        checks += 1

    url = env.get("MINERVA_REGISTRY")
    if url:
        match = re.fullmatch(r"postgres://([a-z0-9_]+):\$\(([A-Z_]+)\)@([a-z0-9-]+):(\d+)/([a-z0-9_]+)", url) \
            or fail(f"bad registry URL {url}")
        user, password_var, host, port, db = match.groups()
        service = by_kind["Service"].get(host) or fail(f"{url} names no Service")
        if int(port) not in [p["port"] for p in service["spec"]["ports"]]:
            fail(f"{url}: the Service {host} has no port {port}")
        names = [e["name"] for e in container["env"]]
        if password_var not in names or names.index(password_var) > names.index("MINERVA_REGISTRY"):
            fail(f"{url}: $({password_var}) is not defined before MINERVA_REGISTRY")
        ref = next(e for e in container["env"] if e["name"] == password_var)["valueFrom"]["secretKeyRef"]
        secret = by_kind.get("Secret", {}).get(ref["name"]) or fail(f"no Secret {ref['name']}")
        if ref["key"] not in secret.get("stringData", secret.get("data", {})):
            fail(f"Secret {ref['name']} has no key {ref['key']}")
        server = next(d for d in workloads.values()
                      if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]))
        server_env = {e["name"]: e for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
        if (server_env["POSTGRES_USER"]["value"], server_env["POSTGRES_DB"]["value"]) != (user, db):
            fail(f"{url}: the server creates user {server_env['POSTGRES_USER']} and database {server_env['POSTGRES_DB']}")
        if server_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] != ref:
            fail(f"{url}: the server's password is not the replicas' Secret")
        checks += 1

    # Every metric the rules and the picker read is one Minerva exports.
    exported = set(re.findall(r"^# TYPE (minerva_[a-z_]+) ", open(metrics_file).read(), re.M))
    text = open(rendered).read()
    # The shared cache's error counter exists once there was an error: a server without
    # Redis never has one to show.
    used = set(re.findall(r"\bminerva_[a-z_]+", text)) - {"minerva_embedding_cache_shared_errors_total"}
    used = {m.removesuffix("_bucket") for m in used}
    missing = sorted(m for m in used if m not in exported)
    if missing:
        fail(f"metrics not exported by Minerva: {missing} (exported: {sorted(exported)})")
    checks += 1
    print(f"ok: {checks} consistency checks, {len(used)} metrics all exported")


if __name__ == "__main__":
    main(*sys.argv[1:])
