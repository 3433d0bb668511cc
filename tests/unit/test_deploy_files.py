"""The Dockerfile and compose file cannot be built here (no Docker engine): hold them to the
project by reading them — every path they copy exists, every command they run is a real
`sense` subcommand, the runtime user is not root."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

from service.cli import parser

ROOT = Path(__file__).resolve().parents[2]


def _subcommands() -> set[str]:
    actions = [a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(actions[0].choices)  # type: ignore[attr-defined]


def test_dockerfile_stages_paths_and_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    for src in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.MULTILINE):
        for path in src.split():
            assert (ROOT / path).exists(), path
    assert "maturin build" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["sense"] and "sense" in scripts
    cmd = json.loads(re.search(r"^CMD\s+(.+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert cmd[0] in _subcommands()
    python = re.search(r"python:(\d+\.\d+)", text).group(1)  # type: ignore[union-attr]
    assert python == "3.11"


def test_compose_services_use_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "server", "worker"} <= set(services)
    assert "pgvector" in services["postgres"]["image"]
    for name in ("migrate", "server", "worker"):
        service = services[name]
        assert service["build"] == "."
        assert service["command"][0] in _subcommands(), name
        env = service["environment"]
        assert env["SENSE_DATABASE_URL"].startswith("postgresql://")
        assert env["SENSE_REDIS_URL"].startswith("redis://")
    assert "8000:8000" in services["server"]["ports"]


def test_compose_writes_no_secret_and_hands_each_service_only_its_own() -> None:
    text = (ROOT / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    # every secret comes from the environment (.env), and must be set: ${NAME:?...}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert "--requirepass" in services["redis"]["command"]
    for name in ("migrate", "server", "worker"):
        env = services[name]["environment"]
        assert "${POSTGRES_PASSWORD:?" in env["SENSE_DATABASE_URL"]
        assert "${REDIS_PASSWORD:?" in env["SENSE_REDIS_URL"]
        assert ("SENSE_ADMIN_TOKEN" in env) is (name == "server"), name
    assert "sense:sense@" not in text


def test_prometheus_scrapes_the_server_and_the_worker_and_loads_the_rules() -> None:
    folder = ROOT / "deploy" / "prometheus"
    config = yaml.safe_load((folder / "prometheus.yml").read_text())
    assert all((folder / name).exists() for name in config["rule_files"])
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {
        "server:8000",
        f"worker:{services['worker']['environment']['SENSE_WORKER_METRICS_PORT']}",
    }
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    for volume in grafana["volumes"]:
        source = volume.split(":")[0]
        assert not source.startswith("./") or (ROOT / source).exists(), volume
    board = json.loads((ROOT / "deploy/grafana/dashboards/sense-ingest.json").read_text())
    assert board["uid"] == "sense-ingest" and board["panels"]
