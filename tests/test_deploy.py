"""The deployment files as a new user gets them: the compose stack, the image, the Kubernetes
manifests. Checked for structure, wiring and schema (no Docker engine or cluster here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from providers import load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes version the manifests are checked against.
KUBERNETES = "1.31"


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document["services"]


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def test_compose_creates_the_input_topic_before_the_worker_starts() -> None:
    services = _compose()
    kafka, topics, worker = services["kafka"], services["topics"], services["worker"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "as in production: topics on purpose"
    assert topics["image"] == kafka["image"], "the Kafka image's own tools"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    internal = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")[0].removeprefix("PLAINTEXT://")
    args = topics["command"]
    assert args[args.index("--bootstrap-server") + 1] == internal == worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    created = args[args.index("--topic") + 1]
    mount = worker["volumes"][0].split(":")
    config = ROOT / mount[0] / Path(worker["command"][-1]).name
    assert mount[1] == "/config" and config.exists()
    settings = load_settings(config, env={"OPENAI_API_KEY": "k", "KAFKA_BOOTSTRAP_SERVERS": internal,
                                          "PROVIDER_BASE_URL": worker["environment"]["PROVIDER_BASE_URL"]})  # fmt: skip
    assert {p.input_topic for p in settings.pipelines} == {created}
    assert settings.kafka.bootstrap_servers == internal
    assert worker["environment"]["OPENAI_API_KEY"].startswith("${OPENAI_API_KEY")


def test_compose_checks_readiness_and_gives_the_worker_its_stop_grace() -> None:
    services = _compose()
    worker = services["worker"]
    settings = load_settings(ROOT / "config" / "docker.yaml", env={"OPENAI_API_KEY": "k"})
    assert settings.metrics_host == "0.0.0.0"
    assert f"http://127.0.0.1:{settings.metrics_port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.metrics_port}:{settings.metrics_port}" in worker["ports"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), "only on the host's loopback"
    assert int(worker["stop_grace_period"].removesuffix("s")) > 30, "longer than the worker's own 30 s grace"
    assert worker["restart"] == "unless-stopped", "a worker that exits comes back, as under Kubernetes"
    assert worker["depends_on"]["emulator"]["condition"] == "service_healthy"
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["worker"], "one service builds the image the others run (parallel builds of one tag collide)"
    image = worker["image"]
    assert all(services[name]["image"] == image for name in ("emulator", "producer"))


def test_compose_has_a_sample_producer_behind_a_profile() -> None:
    producer = _compose()["producer"]
    assert producer["profiles"] == ["demo"]
    assert producer["entrypoint"] == ["python", "-m", "demo.produce"]
    from demo.produce import main

    with pytest.raises(SystemExit) as info:  # the command exists and takes the compose arguments
        main(["--help"])
    assert info.value.code == 0


def test_image_installs_only_the_package_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", dockerfile, flags=re.MULTILINE)
    assert len(stages) == 2 and all("slim" in image for image, _ in stages), "multi-stage, slim"
    copies = re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE)
    assert "." not in copies and not {"tests", "bench", "docs", ".venv"} & set(copies)
    runtime = dockerfile.split("\nFROM ")[-1]
    user = re.search(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert user and not user.group(1).startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, flags=re.MULTILINE)
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime
    assert 'ENTRYPOINT ["batchstream"]' in runtime
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!tests/" not in ignored and "!bench/" not in ignored


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_kubernetes_manifests_match_the_api_schema(path: str) -> None:
    for document in yaml.safe_load_all((K8S / path).read_text()):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_deployment_probes_the_health_endpoints_of_its_configuration() -> None:
    manifests = _manifests()
    config = manifests["ConfigMap"]["data"]["batchstream.yaml"]
    secret = manifests["Secret"]["stringData"]
    settings = parse_settings(yaml.safe_load(config), env=secret)  # every key exists in the settings model
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == settings.metrics_port and settings.metrics_host == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["args"][-1] == "/config/batchstream.yaml"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/config"]]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp under a read-only root filesystem"
    assert container["envFrom"][0]["secretRef"]["name"] == manifests["Secret"]["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] > 30, "longer than the worker's own 30 s grace"
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    pdb = manifests["PodDisruptionBudget"]["spec"]
    assert pdb["selector"] == deployment["spec"]["selector"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    outside = {"kustomization.yaml", "secret.yaml"}  # the Secret is applied once, never overwritten by -k
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name not in outside)
    assert [i["name"] for i in kustomization["images"]] == [container["image"].split(":")[0]]
    assert manifests["PodDisruptionBudget"]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_lag_based_autoscaling_follows_the_workers_group_and_stops_at_the_partitions() -> None:
    manifests = _manifests()
    scaled = yaml.safe_load((K8S / "autoscaling" / "scaledobject.yaml").read_text())
    settings = parse_settings(yaml.safe_load(manifests["ConfigMap"]["data"]["batchstream.yaml"]),
                              env=manifests["Secret"]["stringData"])  # fmt: skip
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == manifests["Deployment"]["metadata"]["name"]
    assert spec["minReplicaCount"] >= 1, "never to zero: batches in flight need a worker to follow them"
    (trigger,) = spec["triggers"]
    kafka = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert kafka["consumerGroup"] == settings.kafka.group_id
    assert kafka["topic"] in {p.input_topic for p in settings.pipelines}
    assert kafka["bootstrapServers"] == manifests["Secret"]["stringData"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert kafka["allowIdleConsumers"] == "false", "no more workers than input partitions"
    assert kafka["excludePersistentLag"] == "true", "lag of events at the provider stands still: not a shortage"
    assert int(kafka["lagThreshold"]) >= max(p.window.max_requests for p in settings.pipelines)


def test_the_memory_request_covers_the_measured_peak() -> None:
    (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]

    def mib(quantity: str) -> int:
        return int(quantity.removesuffix("Gi")) * 1024 if quantity.endswith("Gi") else int(quantity.removesuffix("Mi"))

    request, limit = mib(resources["requests"]["memory"]), mib(resources["limits"]["memory"])
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    peaks = [int(m) for m in re.findall(r"(?:Worker peak RSS|peak RSS)[^0-9]{0,40}(\d+) MB", results)]
    assert peaks, "bench/RESULTS.md records the worker's peak RSS"
    assert request * 1.048576 >= max(peaks), f"request {request}Mi under the measured peak {max(peaks)} MB"
    assert limit >= 1.5 * request, "room above the request for larger events and windows"
