"""Native JID code vs its pure-Python reference, on the same realistic inputs.

Run: make bench-native (or .venv/bin/pytest bench/bench_native.py --benchmark-enable).
Not collected by the default test run (pyproject testpaths = ["tests"]).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from service import _native
from tests import jid_reference


def realistic_jids(n: int, seed: int = 1) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = []
    for _ in range(n):
        phone = f"55{rng.randrange(11, 99)}9{rng.randrange(10**7, 10**8)}"
        roll = rng.random()
        if roll < 0.45:
            out.append(f"{phone}@s.whatsapp.net")
        elif roll < 0.60:
            out.append(f"{rng.randrange(10**14, 10**15)}@lid")
        elif roll < 0.70:
            out.append(f"{phone}:{rng.randrange(1, 40)}@s.whatsapp.net")
        elif roll < 0.80:
            out.append(f"1203630{rng.randrange(10**11, 10**12)}@g.us")
        elif roll < 0.85:
            out.append(f"{phone}@c.us")
        elif roll < 0.90:
            out.append("status@broadcast")
        elif roll < 0.95:
            out.append(f"{rng.randrange(10**14, 10**15)}:{rng.randrange(1, 40)}@lid")
        else:
            out.append(None)
    return out


JIDS = realistic_jids(10_000)
KEYS = [
    (JIDS[i], JIDS[i + 1], None, None, None, None, None, None, None, i % 7 == 0, JIDS[i + 2])
    for i in range(0, 3000, 3)
]


@pytest.mark.parametrize("impl", [_native, jid_reference], ids=["rust", "python"])
def test_normalize_jids(benchmark: Any, impl: Any) -> None:
    assert _native.normalize_jids(JIDS) == jid_reference.normalize_jids(JIDS)
    benchmark.group = "normalize_jids (10k)"
    benchmark(impl.normalize_jids, JIDS)


@pytest.mark.parametrize("impl", [_native, jid_reference], ids=["rust", "python"])
def test_resolve_addresses(benchmark: Any, impl: Any) -> None:
    fn: Callable[..., Any] = impl.resolve_addresses
    assert [_native.resolve_addresses(*k) for k in KEYS] == [
        jid_reference.resolve_addresses(*k) for k in KEYS
    ]
    benchmark.group = "resolve_addresses (1k keys)"
    benchmark(lambda: [fn(*k) for k in KEYS])
