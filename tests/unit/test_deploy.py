"""deploy/cluster: the manifests parse, hang together (selectors, services, config and secret
references, the ledger's own environment variables) and run only `ledger` command lines that the
real parser accepts; the cluster's Prometheus finds the pods through Services that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledger.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAMESPACE = "internet-plus-ledger"
API_VERSIONS = {
    "Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1",
    "StatefulSet": "apps/v1", "Deployment": "apps/v1", "Job": "batch/v1",
    "PodDisruptionBudget": "policy/v1",
}  # fmt: skip
LEDGER_IMAGE = "internet-plus-ledger:latest"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "cluster").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] in ("StatefulSet", "Deployment", "Job")]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def test_every_document_is_a_known_kind_in_the_namespace() -> None:
    docs = _documents()
    assert len(docs) >= 15
    for doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["metadata"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "a name is used twice"


def test_selectors_services_and_volumes_hang_together() -> None:
    services = _by_kind("Service")
    pod_labels = [w["spec"]["template"].get("metadata", {}).get("labels", {}) for w in _workloads()]
    for workload in _workloads():
        if workload["kind"] == "Job":
            continue
        spec = workload["spec"]
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
        if workload["kind"] == "StatefulSet":
            assert spec["serviceName"] in services
            claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
            for container in _containers(workload):
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in claims | {
                        v["name"] for v in spec["template"]["spec"].get("volumes", [])
                    }
    for name, service in services.items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), name
    for budget in _by_kind("PodDisruptionBudget").values():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels)


def test_config_and_secrets_referenced_exist_and_set_only_what_the_ledger_reads() -> None:
    maps, secrets = _by_kind("ConfigMap"), _by_kind("Secret")
    known = set(re.findall(r"LEDGER_[A-Z_]+", "".join(
        p.read_text() for p in (Path(__file__).resolve().parents[2] / "ledger").rglob("*.py")
    )))  # fmt: skip
    for doc in (*maps.values(), *secrets.values()):
        keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        unknown = {k for k in keys if k.startswith("LEDGER_")} - known
        assert not unknown, f"{doc['metadata']['name']} sets what no code reads: {unknown}"
    for workload in _workloads():
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"]
    external = maps["ledger-config"]["data"]["LEDGER_BOOTSTRAP_SERVERS"].split(",")
    kafka = _by_kind("StatefulSet")["kafka"]["spec"]
    assert external == [f"kafka-{n}.kafka:9092" for n in range(kafka["replicas"])]


def _ledger_command_lines() -> list[list[str]]:
    lines = []
    for workload in _workloads():
        for container in _containers(workload):
            if container["image"] == LEDGER_IMAGE:
                env = {e["name"] for e in container.get("env", [])}
                args = [a.replace("$(POD_NAME)", "ledger-worker-0") for a in container["args"]]
                if any("$(POD_NAME)" in a for a in container["args"]):
                    assert "POD_NAME" in env
                lines.append(args)
    return lines


def test_every_ledger_command_line_is_accepted_by_the_real_parser() -> None:
    lines = _ledger_command_lines()
    assert {line[0] for line in lines} == {
        "stack", "worker", "project", "api", "isp-api", "idp", "verify"
    }  # fmt: skip
    parser = build_parser()
    for line in lines:
        parser.parse_args(line)  # exits (SystemExit) on a bad command line
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--no-such-flag"])


def test_the_metrics_ports_are_the_ones_the_processes_serve_and_prometheus_finds_them() -> None:
    services = _by_kind("Service")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-cluster.yml").read_text())
    ports_served: dict[str, set[int]] = {}
    for workload in _workloads():
        app = workload["spec"]["template"].get("metadata", {}).get("labels", {}).get("app")
        for container in _containers(workload):
            declared = {p["containerPort"] for p in container.get("ports", [])}
            args = container.get("args", [])
            for flag in ("--metrics-port", "--port"):
                if flag in args:
                    assert int(args[args.index(flag) + 1]) in declared, (app, flag)
            ports_served[app] = declared
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                service_name, namespace = name.split(".")[:2]
                assert namespace == NAMESPACE
                service = services[service_name]
                assert service["spec"]["clusterIP"] == "None", f"{service_name}: one record per pod"
                app = service["spec"]["selector"]["app"]
                assert sd["port"] in ports_served[app], (job["job_name"], app)
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        "ledger-workers",
        "ledger-projections",
        "ledger-apis",
        "ledger-verify",
    }


def test_the_image_copies_what_exists_and_runs_ledger() -> None:
    dockerfile = (DEPLOY / "cluster" / "Dockerfile").read_text()
    root = DEPLOY.parent
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (root / source).exists(), source
    assert 'ENTRYPOINT ["ledger"]' in dockerfile
    assert "LEDGER_LISTEN_HOST=0.0.0.0" in dockerfile
