"""msgspec decoding of real-shaped Evolution payloads, against the standard library's json.

Run: make bench-native (or .venv/bin/pytest bench/bench_decode.py --benchmark-enable).
Not collected by the default test run (pyproject testpaths = ["tests"]).

Inputs: every request body of the captured-shape fixtures (tests/fixtures/evolution, all
Evolution versions and encodings) plus 2,000 events of the bench's traffic mix (bench/traffic.py).
Each benchmark first checks that both sides agree on what they decoded.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench import traffic
from service import payloads
from service.events import EVENTS, build_ops, canonical_event
from service.resolve import Instance

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "evolution"


def fixture_bodies() -> list[bytes]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        for request in json.loads(path.read_text()).get("requests", []):
            if isinstance(request.get("body"), dict) and "event" in request["body"]:
                out.append(json.dumps(request["body"], ensure_ascii=False).encode())
    return out


def traffic_bodies(n: int = 2000) -> list[bytes]:
    instances = [
        traffic.Instance(f"secret-{i}", f"bench-inst-{i}", str(uuid.uuid4()), f"5511900{i:06d}@s")
        for i in range(20)
    ]
    pool = traffic.Pool(instances).build(n)
    return [traffic.expand(t.body, "BEEF", 1, c).encode() for c, t in enumerate(pool)]


BODIES = fixture_bodies() + traffic_bodies()
INSTANCE = Instance(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "bench", None)


def _typed(body: bytes) -> Any:
    """Envelope, then `data` into the type its event decodes to (what the receive path does)."""
    envelope = payloads.envelope_decoder.decode(body)
    spec = EVENTS.get(canonical_event(envelope.event))
    if spec is None or spec[0] is msgspec.Raw:
        return envelope
    try:
        return payloads.decode_data(envelope.data, spec[0])
    except msgspec.ValidationError:
        return None  # the fixtures include wrong shapes on purpose (answered 400)


def test_inputs_are_real_shaped() -> None:
    assert len(BODIES) > 2000
    events = {payloads.envelope_decoder.decode(b).event for b in BODIES}
    assert {"messages.upsert", "messages.update", "send.message", "contacts.upsert"} <= events


@pytest.mark.parametrize("impl", ["msgspec", "json"])
def test_decode_envelope(benchmark: Any, impl: str) -> None:
    for body in BODIES:
        envelope = payloads.envelope_decoder.decode(body)
        doc = json.loads(body)
        assert (envelope.event, envelope.instance) == (doc["event"], doc["instance"])
    benchmark.group = f"envelope decode ({len(BODIES)} bodies)"
    if impl == "msgspec":
        decode = payloads.envelope_decoder.decode
        benchmark(lambda: [decode(b) for b in BODIES])
    else:
        benchmark(lambda: [json.loads(b) for b in BODIES])


@pytest.mark.parametrize("impl", ["msgspec-typed", "json"])
def test_decode_whole_event(benchmark: Any, impl: str) -> None:
    """msgspec into the typed structs (validated) vs json.loads into dicts (not validated)."""
    assert sum(_typed(b) is not None for b in BODIES) > 0.9 * len(BODIES)
    benchmark.group = f"whole event decode ({len(BODIES)} bodies)"
    if impl == "msgspec-typed":
        benchmark(lambda: [_typed(b) for b in BODIES])
    else:
        benchmark(lambda: [json.loads(b) for b in BODIES])


def test_build_ops(benchmark: Any) -> None:
    """Decode + JID normalisation + rows: the per-request CPU of the receive path."""
    bodies = traffic_bodies()
    envelopes = [payloads.envelope_decoder.decode(b) for b in bodies]
    rows = sum(build_ops(e, INSTANCE).ops.row_count() for e in envelopes)
    assert rows >= len(envelopes) * 0.9
    benchmark.group = f"build_ops ({len(envelopes)} traffic events)"
    benchmark(lambda: [build_ops(payloads.envelope_decoder.decode(b), INSTANCE) for b in bodies])
