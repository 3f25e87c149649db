"""The deployment bundle (deploy/): Dockerfile, Compose stack, Kubernetes manifests.

No container engine runs here, so they are checked by linters and schemas: hadolint for the
Dockerfile, the Compose specification's JSON schema (as vendored by check-jsonschema),
kubernetes-validate (strict) for the Kubernetes kinds, the Prometheus operator's CRD models
for ServiceMonitor and PrometheusRule; promtool for Prometheus's config; `driftline check`
for the driftline configurations they ship; and by checking that the pieces point at each
other (ports, labels, mounts, secrets). The demo helper of the Compose stack runs for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftline.service.demo.broker import LocalBroker, free_port
from driftline.service.demo.traffic import FEATURES
from driftline.service.reference import load_profile

from tests.helpers import new_webhook_secret, wait_until

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30"


def venv_tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kw)


# --- Dockerfile --------------------------------------------------------------------------

def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    proc = run(venv_tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE))
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN cd /tmp && pip install x\n")
    proc = run(venv_tool("hadolint"), str(bad))
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3003"):
        assert rule in proc.stdout, proc.stdout


def test_dockerfile_is_slim_non_root_with_a_health_check() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) == 2 and all("-slim" in f for f in froms), "multi-stage, slim runtime"
    [user] = [args for op, args in instructions if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000
    assert [op for op, _ in instructions].index("USER") > [op for op, _ in instructions].index("FROM", 1)
    [health] = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert "/healthz" in health and "CMD" in health
    assert any(op == "EXPOSE" and "9108" in args for op, args in instructions)
    assert any(op == "ENV" and "DO_NOT_TRACK=1" in args for op, args in instructions)
    [entry] = [json.loads(args) for op, args in instructions if op == "ENTRYPOINT"]
    assert entry == ["driftline"]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for op, args in instructions:  # what is copied from the context exists and is not ignored
        if op == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore, f"{src} is excluded by Dockerfile.dockerignore"


# --- Compose -----------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_specification() -> None:
    proc = run(venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_compose_schema_check_has_teeth(tmp_path: Path) -> None:
    doc = compose()
    doc["services"]["driftline"]["dependson"] = ["kafka"]  # a typo of depends_on
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = run(venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert proc.returncode != 0 and "dependson" in proc.stdout + proc.stderr


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path, for the service's bind mounts (relative to deploy/)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith("."):
            out[dst] = (DEPLOY / src).resolve()
    return out


def test_compose_runs_the_full_stack_with_kafka_in_kraft_mode() -> None:
    services = compose()["services"]
    assert {"kafka", "driftline", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert "zookeeper" not in json.dumps(compose()).lower()
    kafka = services["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voter_port = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert re.search(r"CONTROLLER://[^,]*:(\d+)", kafka["KAFKA_LISTENERS"]).group(1) == voter_port  # type: ignore[union-attr]
    assert "CONTROLLER" in kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] and kafka["CLUSTER_ID"]
    for name, service in services.items():  # every file mounted from the repository exists
        for host in bind_mounts(service).values():
            assert host.exists(), f"{name}: {host}"
    # driftline waits for the topic and the reference; its config and state are mounted
    dl = services["driftline"]
    assert dl["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    config = yaml.safe_load((DEPLOY / "compose" / "driftline.yaml").read_text())
    assert bind_mounts(dl)["/etc/driftline/driftline.yaml"] == DEPLOY / "compose" / "driftline.yaml"
    assert any(v.startswith("driftline-state:") and v.endswith(str(Path(config["service"]["state_path"]).parent))
               for v in dl["volumes"])
    for m in config["monitors"]:
        assert m["kafka"]["bootstrap_servers"] == ["kafka:9092"]
        assert m["kafka"]["topic"] in services["kafka-init"]["command"]
        assert os.path.dirname(m["reference"]["path"]) in " ".join(dl["volumes"])
        assert m["retrain"]["secret_env"] in dl["environment"]
    assert config["service"]["listen"] == "0.0.0.0:9108"


def test_compose_wires_prometheus_alertmanager_and_grafana() -> None:
    services = compose()["services"]
    prom_mounts = bind_mounts(services["prometheus"])
    prom_conf_path = prom_mounts["/etc/prometheus/prometheus.yml"]
    prom_conf = yaml.safe_load(prom_conf_path.read_text())
    for rule_file in prom_conf["rule_files"]:  # the rules sit next to the config in the container
        assert prom_mounts[f"/etc/prometheus/{rule_file}"] == DEPLOY / "prometheus" / rule_file
    [dl_job] = [j for j in prom_conf["scrape_configs"] if j["job_name"] == "driftline"]
    assert dl_job["static_configs"][0]["targets"] == ["driftline:9108"]
    assert prom_conf["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]

    am = services["alertmanager"]
    am_conf = yaml.safe_load(bind_mounts(am)["/etc/alertmanager/alertmanager.yml"].read_text())
    secret_files = {s["target"] for s in am["secrets"]}
    referenced = set(re.findall(r"(/etc/alertmanager/secrets/[\w-]+)", json.dumps(am_conf)))
    assert referenced and referenced <= secret_files, referenced - secret_files
    assert {s["source"] for s in am["secrets"]} <= set(compose()["secrets"])

    grafana = bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning/datasources"] == ROOT / "dashboards" / "provisioning" / "datasources"
    assert grafana["/etc/grafana/provisioning/dashboards"] == ROOT / "dashboards" / "provisioning" / "dashboards"
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/driftline.yaml").read_text())
    assert grafana[provider["providers"][0]["options"]["path"]] == ROOT / "dashboards"
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/driftline-prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert datasource["datasources"][0]["jsonData"]["timeInterval"] == prom_conf["global"]["scrape_interval"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "dashboards" / Path(home).name).exists()


def test_promtool_checks_the_compose_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make ops-tools` installs Debian's prometheus package"
    proc = run(promtool, "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- driftline's own configurations ------------------------------------------------------

def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def k8s(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in k8s_docs() if d["kind"] == kind]
    return doc


def driftline_check(config: dict[str, Any], reference: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`driftline check` on a shipped configuration, its reference paths pointed at a real profile."""
    config = json.loads(json.dumps(config))
    for m in config["monitors"]:
        m["reference"]["path"] = str(reference)
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "DO_NOT_TRACK": "1", "DRIFTLINE_WEBHOOK_SECRET": new_webhook_secret(),
           "DRIFTLINE_API_TOKEN": "token"}
    return run(sys.executable, "-m", "driftline.service.cli", "check", "--config", str(path), env=env)


@pytest.mark.parametrize("which", ["compose", "kubernetes-0", "kubernetes-1"])
def test_shipped_driftline_configurations_pass_driftline_check(which: str, reference_path: Path,
                                                               tmp_path: Path) -> None:
    if which == "compose":
        config = yaml.safe_load((DEPLOY / "compose" / "driftline.yaml").read_text())
    else:
        config = yaml.safe_load(k8s("ConfigMap")["data"][f"driftline-{which[-1]}.yaml"])
    proc = driftline_check(config, reference_path, tmp_path)
    assert proc.returncode == 0 and "OK (1 monitor)" in proc.stdout, proc.stdout + proc.stderr


# --- Kubernetes --------------------------------------------------------------------------

def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    kinds = []
    for path, doc in k8s_docs():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "kustomize.config.k8s.io/")):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= set(kinds)


def test_kustomize_builds_the_bundle_and_its_output_validates() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize) is part of this machine image; install it to run this test"
    proc = run(kubectl, "kustomize", str(K8S))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        assert doc["metadata"]["namespace"] == "driftline", doc["kind"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert operator_model_round_trip(doc) == doc
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    [statefulset] = [d for d in docs if d["kind"] == "StatefulSet"]
    image = statefulset["spec"]["template"]["spec"]["containers"][0]["image"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert image == f"{kustomization['images'][0]['newName']}:{kustomization['images'][0]['newTag']}"
    assert len(docs) == len(k8s_docs()) - 1  # everything but the kustomization itself


def test_kubernetes_strict_validation_has_teeth() -> None:
    import kubernetes_validate

    doc = k8s("StatefulSet")
    doc["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def operator_model_round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    """Validate with the Prometheus operator's CRD models; unknown fields are dropped, so the
    round trip differs from the input when a field is misspelt."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    return model.model_dump(by_alias=True, exclude_unset=True, mode="json")  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_operator_resources_validate_against_the_crd_models(kind: str) -> None:
    doc = k8s(kind)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator_model_round_trip(doc) == doc


def test_the_crd_model_check_has_teeth() -> None:
    from pydantic import ValidationError

    doc = k8s("ServiceMonitor")
    doc["spec"]["endpoints"][0]["intervall"] = "15s"
    assert operator_model_round_trip(doc) != doc
    doc = k8s("ServiceMonitor")
    doc["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValidationError):
        operator_model_round_trip(doc)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    [image] = kustomization["images"]
    assert image["name"] == k8s("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_kubernetes_pieces_point_at_each_other() -> None:
    statefulset, service, monitor = k8s("StatefulSet"), k8s("Service"), k8s("ServiceMonitor")
    pod = statefulset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    [svc_port] = service["spec"]["ports"]
    assert svc_port["targetPort"] in port_names
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [svc_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert service["metadata"]["name"] == "driftline"  # the job label the alert rules select

    # probes: liveness on /healthz, readiness on /readyz, on the metrics port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": svc_port["targetPort"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": svc_port["targetPort"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys() & container["resources"]["requests"].keys()

    # non-root as in the image, read-only root, nothing more than needed
    dockerfile_uid = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M).group(1)  # type: ignore[union-attr]
    sec = pod["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True and str(sec["runAsUser"]) == dockerfile_uid
    csec = container["securityContext"]
    assert csec["readOnlyRootFilesystem"] and not csec["allowPrivilegeEscalation"]
    assert csec["capabilities"]["drop"] == ["ALL"]

    # pod driftline-N runs the ConfigMap's driftline-N.yaml: one config per replica, each
    # monitor in exactly one of them (a monitor is read by one process)
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    assert config_path.name == "$(POD_NAME).yaml"
    [pod_name] = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_map = k8s("ConfigMap")
    assert volumes[mounts[str(config_path.parent)]["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    name = statefulset["metadata"]["name"]
    shards = [f"{name}-{i}.yaml" for i in range(statefulset["spec"]["replicas"])]
    assert sorted(config_map["data"]) == sorted(shards)
    configs = [yaml.safe_load(config_map["data"][f]) for f in shards]
    monitors = [m["name"] for c in configs for m in c["monitors"]]
    groups = [m["kafka"]["group_id"] for c in configs for m in c["monitors"]]
    assert len(set(monitors)) == len(monitors) and len(set(groups)) == len(groups)
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    claims = {d["metadata"]["name"] for _, d in k8s_docs() if d["kind"] == "PersistentVolumeClaim"}
    [state_claim] = statefulset["spec"]["volumeClaimTemplates"]
    for text, config in zip((config_map["data"][f] for f in shards), configs, strict=True):
        assert config["service"]["listen"].endswith(f":{port_names[svc_port['targetPort']]}")
        env_names = set(re.findall(r"_env:\s*(\w+)", text))
        assert env_names and env_names <= from_secret, env_names - from_secret
        # state on the shard's own claim, profiles on the shared one, where the config expects them
        assert mounts[str(Path(config["service"]["state_path"]).parent)]["name"] == state_claim["metadata"]["name"]
        for m in config["monitors"]:
            volume = volumes[mounts[str(Path(m["reference"]["path"]).parent)]["name"]]
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert mounts["/etc/driftline"]["readOnly"] is True and mounts["/profiles"]["readOnly"] is True


# --- the Compose stack's demo helper, for real ------------------------------------------------

DEMO = DEPLOY / "compose" / "demo.py"


def test_demo_reference_satisfies_the_compose_configuration(tmp_path: Path) -> None:
    out = tmp_path / "profiles" / "credit-risk.dlref"
    proc = run(sys.executable, str(DEMO), "reference", "--out", str(out), "--rows", "3000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(load_profile(out).columns) >= set(FEATURES)
    again = run(sys.executable, str(DEMO), "reference", "--out", str(out))
    assert again.returncode == 0 and "keeping it" in again.stdout
    config = yaml.safe_load((DEPLOY / "compose" / "driftline.yaml").read_text())
    check = driftline_check(config, out, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
def test_demo_traffic_reaches_the_topic(broker: LocalBroker, topic: str) -> None:
    proc = run(sys.executable, str(DEMO), "traffic", "--bootstrap", broker.bootstrap, "--topic", topic,
               "--rate", "200", "--duration", "2", "--shift-after", "1")
    assert proc.returncode == 0 and "shifting" in proc.stdout, proc.stdout + proc.stderr
    sent = int(re.search(r"sent (\d+) events", proc.stdout).group(1))  # type: ignore[union-attr]
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=2000)
    records = [json.loads(r.value) for r in consumer]
    consumer.close()
    assert len(records) == sent > 0
    assert all(set(r["features"]) <= set(FEATURES) and "ts" in r for r in records)


def test_demo_receiver_accepts_other_containers(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DRIFTLINE_WEBHOOK_SECRET": new_webhook_secret()}
    proc = subprocess.Popen([sys.executable, str(DEMO), "receiver", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening_on_all_interfaces() -> bool:
            lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
            return any(f.split()[1] == f"00000000:{port:04X}" and f.split()[3] == "0A" for f in lines)

        wait_until(lambda: listening_on_all_interfaces() or proc.poll() is not None, 20, what="the receiver")
        assert proc.poll() is None
        req = urllib.request.Request(f"http://127.0.0.1:{port}/retrain", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(req, timeout=5)
        assert unsigned.value.code == 400  # it verifies signatures
    finally:
        proc.terminate()
        proc.wait(10)
