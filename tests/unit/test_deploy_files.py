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


def test_prometheus_example_scrapes_metrics() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    host = job["static_configs"][0]["targets"][0].split(":")[0]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert host in compose["services"]
