"""/openapi.json documents every route the app serves (bench routes aside), and is valid."""

from __future__ import annotations

import re

from starlette.routing import Route, WebSocketRoute

from service import app, openapi, webhook


def served_paths() -> set[tuple[str, str]]:
    out = {("post", path) for path in webhook.PATHS}  # served raw, before Starlette's routing
    for route in app.routes():
        if not isinstance(route, Route | WebSocketRoute):  # Mount: the dashboard's static files
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in getattr(route, "methods", None) or {"GET"}:  # WebSocket: GET + Upgrade
            if method != "HEAD":
                out.add((method.lower(), path))
    return out


def test_every_route_is_documented_and_nothing_else() -> None:
    doc = openapi.document()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented == served_paths()


def test_every_reference_resolves() -> None:
    doc = openapi.document()
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_every_event_with_typed_data_is_described() -> None:
    """Events whose data the code validates have their data schema; none that it does not know."""
    import msgspec

    from service.events import EVENTS, canonical_event

    documented = {canonical_event(e) for e in openapi._EVENT_DATA}
    validated = {event for event, (kind, _) in EVENTS.items() if kind is not msgspec.Raw}
    assert validated <= documented <= set(EVENTS)
    for event, kind in openapi._EVENT_DATA.items():
        if EVENTS[canonical_event(event)][0] is not msgspec.Raw:
            assert EVENTS[canonical_event(event)][0] == kind, event
