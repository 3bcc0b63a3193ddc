"""The deployment files: Kubernetes manifests validate (built-in kinds against the bundled OpenAPI
schemas of kubernetes-validate, offline; the KEDA ScaledObject against our own JSON Schema), their
settings agree with the worker's (names, drain deadline vs grace period, Redis persistence), the
group-creation Job's shell command works against a real Redis, and the Dockerfile builds with the
Makefile's `wheel` target."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ciotrack.fleet.cli import configure_parser
from ciotrack.fleet.settings import DEFAULT_BURST, DEFAULT_RATE_LIMIT
from ciotrack.fleet.streams import GROUP, StreamKeys
from redis_harness import RedisServer

from .fleet_procs import redis_client

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"


def _documents(pattern: str = "**/*.yaml") -> list[tuple[str, dict[str, Any]]]:
    """The manifests: all of them (``extras/`` too), or those ``pattern`` picks."""
    docs = []
    for path in sorted(K8S.glob(pattern)):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _find(kind: str, name: str | None = None) -> dict[str, Any]:
    for _, doc in _documents():
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise AssertionError(f"no {kind} {name or ''} in deploy/k8s")


def _worker_args() -> dict[str, str]:
    container = _find("Deployment", "ciotrack-worker")["spec"]["template"]["spec"]["containers"][0]
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def test_builtin_kinds_validate_strictly_offline() -> None:
    kinds = set()
    for _, doc in _documents():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {"Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "StatefulSet", "ConfigMap",
            "Service", "Job", "Secret"} <= kinds


def test_validation_would_catch_a_broken_manifest() -> None:
    deployment = _find("Deployment", "ciotrack-worker")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "thirty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_keda_scaled_object_matches_our_schema_and_the_stream_names() -> None:
    schema = json.loads((K8S / "schemas" / "keda-scaledobject.schema.json").read_text())
    scaled = _find("ScaledObject")
    jsonschema.validate(scaled, schema)
    triggers = [t["metadata"] for t in scaled["spec"]["triggers"]]
    assert any("lagCount" in t for t in triggers) and any("pendingEntriesCount" in t for t in triggers)
    for trigger in triggers:
        assert trigger["consumerGroup"] == GROUP
        assert trigger["stream"] == StreamKeys.for_site("YOUR-SITE-ID").work
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ciotrack-worker"
    wrong = json.loads(json.dumps(scaled))
    wrong["spec"]["triggers"][0]["metadata"]["lagcount"] = "5"  # a typo KEDA would silently ignore
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def test_keda_reaches_the_workers_redis_from_its_own_namespace() -> None:
    # KEDA's operator runs the scaler from its own namespace (keda), where a bare Service name does not
    # resolve ("lookup ciotrack-redis ...: no such host", kedacore/keda#6247, #5442): the address must name
    # the namespace of the Redis Service the workers use, and the same port and database.
    service = _find("Service", "ciotrack-redis")
    worker_redis = urlsplit(_worker_args()["redis-url"])
    for trigger in (t["metadata"] for t in _find("ScaledObject")["spec"]["triggers"]):
        host, _, port = trigger["address"].rpartition(":")
        labels = host.split(".")
        assert labels[0] == service["metadata"]["name"] == worker_redis.hostname
        assert len(labels) >= 3 and labels[2] == "svc", host  # <service>.<namespace>.svc[.cluster.local]
        assert int(port) == service["spec"]["ports"][0]["port"] == worker_redis.port
        assert trigger.get("databaseIndex", "0") == (worker_redis.path.lstrip("/") or "0")


def test_grace_period_covers_the_drain_deadline_and_args_parse() -> None:
    deployment = _find("Deployment", "ciotrack-worker")
    pod = deployment["spec"]["template"]["spec"]
    args = _worker_args()
    assert pod["terminationGracePeriodSeconds"] >= float(args["drain-timeout"]) + 2
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    parsed = parser.parse_args(pod["containers"][0]["args"])  # every arg is one the worker knows
    assert parsed.metrics_port == 9100
    # The manifest spells out the worker's defaults (the pacing measured to reach 99 % without a 429).
    assert (parsed.rate_limit, parsed.burst) == (DEFAULT_RATE_LIMIT, DEFAULT_BURST) == (97, 2)
    probes = pod["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in probes["env"]}
    assert "secretKeyRef" in env["CIOTRACK_API_KEY"]["valueFrom"]
    assert not any("api-key" in a for a in probes["args"])


def test_redis_is_persistent_and_never_evicts() -> None:
    conf = _find("ConfigMap", "ciotrack-redis")["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line.strip())
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "always"
    assert settings["maxmemory-policy"] == "noeviction"
    statefulset = _find("StatefulSet", "ciotrack-redis")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert compose["services"]["worker"]["stop_grace_period"] == "30s"


def test_compose_publishes_redis_on_loopback_only() -> None:
    # Redis there has no password and the official image turns protected mode off: a port published on
    # every interface hands the stream (customer data) to anyone on the laptop's network. The app
    # processes the compose file is for reach it as localhost.
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), (name, published)


def test_group_job_command_creates_the_group_and_is_idempotent(redis_server: RedisServer) -> None:
    job = _find("Job", "ciotrack-create-group")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("-h ciotrack-redis", f"-h 127.0.0.1 -p {redis_server.port}")
    env = {"CIOTRACK_SITE_ID": "site-1", "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # created, then BUSYGROUP: both succeed
        done = subprocess.run([*container["command"], script], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
    groups = redis_client(redis_server.url).xinfo_groups(StreamKeys.for_site("site-1").work)
    assert groups[0]["name"] == GROUP.encode() and groups[0]["last-delivered-id"] == b"0-0"
    bad = script.replace(f"-p {redis_server.port}", "-p 1")  # nothing listens there: the Job must fail
    assert subprocess.run([*container["command"], bad], env=env, capture_output=True, timeout=30).returncode != 0


def test_dockerfile_builds_with_make_wheel_and_runs_the_worker_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", dockerfile, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "build" and stages[1][0] == "python:3.11-slim"
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.MULTILINE)
    make_line = next(r for r in runs if r.startswith("make wheel"))
    make_args = shlex.split(make_line)
    # What `make wheel` runs with those variables is a maturin release build into the copied dir.
    dry = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *make_args[1:]],
                         capture_output=True, text=True, check=True)
    commands = dry.stdout
    assert "/opt/build/bin/python -m pip install -q 'maturin>=1.7,<2' 'ziglang>=0.11'" in commands
    assert re.search(r"/opt/build/bin/maturin build --release --compatibility manylinux2014\s+(\\\s+)?--zig "
                     r"--interpreter /opt/build/bin/python --out /wheels", commands), commands
    assert "/opt/build/bin/maturin sdist --out /wheels" in commands
    assert "COPY --from=build /wheels /wheels" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["ciotrack", "worker"]' in dockerfile
    assert "[fleet]" in dockerfile


def test_applying_the_folder_applies_no_example_secret_and_one_autoscaler() -> None:
    # `kubectl apply -f deploy/k8s/` (not recursive) is what a platform engineer runs. It used to apply the
    # example Secret too, overwriting the real one with api-key REPLACE-ME (every worker then paused on 401),
    # and both the KEDA ScaledObject and the HPA, which fight over the same Deployment.
    applied = [doc["kind"] for _, doc in _documents("*.yaml")]
    assert "Secret" not in applied
    assert applied.count("ScaledObject") + applied.count("HorizontalPodAutoscaler") == 1
    extras = {doc["kind"] for _, doc in _documents("extras/*.yaml")}
    assert extras == {"Secret", "HorizontalPodAutoscaler"}
