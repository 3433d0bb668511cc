"""``GET /openapi.json``: the HTTP contract, with schemas generated from the msgspec types.

The request and response bodies come from the same msgspec types the handlers decode and encode
(service/api.py, service/admin.py, service/search.py, and service/payloads.py for the Evolution
``data`` of each event), so the document cannot drift from the code's idea of a valid body.
tests/e2e/test_openapi.py runs schemathesis against it on the real server.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from service import admin, endpoints, search
from service import payloads as p
from service.events import EVENT_TABLE, MAX_NAME_CHARS
from service.resources import (
    BackfillJob,
    Chat,
    InstanceOut,
    ItemsOfJobs,
    JobCreated,
    Message,
    MessagePage,
)

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_REF = "#/components/schemas/{name}"
# Evolution's types live under their own prefix: several share a name with a resource type.
_EVOLUTION_REF = "#/components/schemas/evolution.{name}"

# Cursors as the API hands them out (api.encode_cursor, live.frames.encode_position), bounded
# so that every value the pattern admits is one the handlers can decode; empty means "not given".
BEFORE_CURSOR = r"^([0-9]{1,16}\.[0-9]{1,18})?$"
AFTER_CURSOR = r"^(c[0-9]{1,18}\.[0-9]{1,18})?$"
# Not only whitespace, as Python's str.strip() sees it (it also strips \x1c-\x1f and \x85).
# And no NUL anywhere: a NUL in a path or query is refused (service.http.RejectNul), and Postgres
# text cannot hold one.
NON_BLANK = r"^[^\x00]*[^\s\x1c-\x1f\x85\x00][^\x00]*$"
NO_NUL = r"^[^\x00]*$"
# A message id: what the read API can name in a URL path (service/events.py refuses the rest).
MESSAGE_ID = r"^[^\x01-\x1f\x7f]*$"


class Error(msgspec.Struct):
    error: str
    detail: str


class ItemsOfChats(msgspec.Struct):
    items: list[Chat]


class ItemsOfInstances(msgspec.Struct):
    items: list[InstanceOut]


class Replayed(msgspec.Struct):
    replayed: int


class WebhookAnswer(msgspec.Struct):
    status: str  # stored | quarantined | ignored | kept
    event: str | None = None  # with "kept": the event name as received


class Status(msgspec.Struct):
    status: str


# Evolution event -> the type its `data` is documented as, from the event table: events not
# listed are acknowledged whatever their data (ignored, or kept as received). Groups are read
# from the raw JSON (their shapes vary by version) and documented with their typed shape;
# group-participants.update is kept as received.
_EVENT_DATA: dict[str, Any] = {
    name: p.Groups if name.startswith("groups.") else kind
    for name, (kind, _) in EVENT_TABLE.items()
    if kind is not msgspec.Raw or name.startswith("groups.")
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
        schema = {**schema, "pattern": NO_NUL}
    elif schema.get("type") == "integer":
        # an empty value means "not given" (service.requests.int_param)
        schema = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _path(name: str, description: str = "", pattern: str = NO_NUL) -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern}
    out = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        out["description"] = description
    return out


def _envelope(data_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The webhook body: the Evolution envelope, with ``data`` typed by ``event``."""
    common = {
        "instance": {"type": "string", "description": "the Evolution instance name"},
        "destination": {"type": ["string", "null"]},
        "date_time": {"type": ["string", "null"]},
        "sender": {"type": ["string", "null"], "description": "the instance's own JID"},
        "server_url": {"type": ["string", "null"]},
        "apikey": {"type": ["string", "null"]},
    }
    branches = [
        {
            "type": "object",
            "required": ["event", "instance", "data"],
            "properties": {"event": {"const": event}, "data": schema, **common},
        }
        for event, schema in data_schemas.items()
    ]
    # Any other event name (spelled so that it is none of the typed ones): ignored or kept as
    # received, whatever its data.
    branches.append(
        {
            "type": "object",
            "required": ["event", "instance"],
            "properties": {
                "event": {"type": "string", "not": {"enum": sorted(data_schemas)}},
                "data": {},
                **common,
            },
        }
    )
    return {"oneOf": branches}


def _message_ids(schema: dict[str, Any]) -> None:
    """The message ids of Evolution's types (``id``, ``keyId``): no control character."""
    for name, prop in (schema.get("properties") or {}).items():
        if name not in ("id", "keyId"):
            continue
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == "string":
                branch["pattern"] = MESSAGE_ID


def _body(ref: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _endpoint_paths(
    unauthorized: dict[str, Any], bad: dict[str, Any], limit: dict[str, Any]
) -> dict[str, Any]:
    """The tenant's endpoints (fan-out, service/endpoints.py)."""
    one = [_path("endpoint_id")]
    missing = _error("no such endpoint (or another tenant's)")
    invalid = _error("invalid body, or a URL that is not allowed (url_refused)")
    common = {"401": unauthorized, "400": _error("not JSON"), "413": _error("body over 64 KiB")}
    return {
        "/api/v1/endpoints": {
            "post": {
                "summary": "Subscribe an endpoint to this tenant's events (secret shown once)",
                "security": _BEARER,
                "requestBody": _body("EndpointIn"),
                "responses": {"201": _ok("Endpoint"), **common, "422": invalid},
            },
            "get": {
                "summary": "This tenant's endpoints",
                "security": _BEARER,
                "responses": {"200": _ok("Endpoints"), "401": unauthorized},
            },
        },
        "/api/v1/endpoints/{endpoint_id}": {
            "get": {
                "summary": "One endpoint",
                "security": _BEARER,
                "parameters": one,
                "responses": {"200": _ok("Endpoint"), "401": unauthorized, "404": missing},
            },
            "patch": {
                "summary": "Change an endpoint (url, events, mode, filters, enabled)",
                "security": _BEARER,
                "parameters": one,
                "requestBody": _body("EndpointPatch"),
                "responses": {"200": _ok("Endpoint"), **common, "404": missing, "422": invalid},
            },
            "delete": {
                "summary": "Remove an endpoint",
                "security": _BEARER,
                "parameters": one,
                "responses": {
                    "204": {"description": "removed"},
                    "401": unauthorized,
                    "404": missing,
                },
            },
        },
        "/api/v1/endpoints/{endpoint_id}/rotate-secret": {
            "post": {
                "summary": "A new signing secret; the old one still signs for the overlap",
                "security": _BEARER,
                "parameters": one,
                "requestBody": {**_body("EndpointRotateIn"), "required": False},
                "responses": {
                    "200": _ok("EndpointSecretRotated"),
                    **common,
                    "404": missing,
                    "422": invalid,
                },
            }
        },
        "/api/v1/endpoints/{endpoint_id}/replay": {
            "post": {
                "summary": "Send again everything from a time or after a position, in order",
                "security": _BEARER,
                "parameters": one,
                "requestBody": _body("EndpointReplayIn"),
                "responses": {
                    "202": _ok("Replaying", "Accepted"),
                    **common,
                    "404": missing,
                    "422": invalid,
                },
            }
        },
        "/api/v1/endpoints/{endpoint_id}/attempts": {
            "get": {
                "summary": "Recent delivery attempts, newest first",
                "security": _BEARER,
                "parameters": [*one, _query("limit", {**limit, "maximum": 100})],
                "responses": {
                    "200": _ok("EndpointAttempts"),
                    "400": bad,
                    "401": unauthorized,
                    "404": missing,
                },
            }
        },
    }


def _admin_parameters(path: str) -> list[dict[str, Any]]:
    found = [_path("ref", "id or name")]
    if "{name}" in path:
        # a `path` segment: Starlette's `.*` stops at a newline
        found.append(_path("name", "the instance name", r"^[^\x00\n]*$"))
    return found


@cache
def document() -> dict[str, Any]:
    resource_types = [
        Error,
        Message,
        MessagePage,
        ItemsOfChats,
        ItemsOfInstances,
        search.Results,
        admin.TenantCreated,
        admin.SourceCreated,
        admin.InstanceCreated,
        admin.TokenRotated,
        admin.ApikeySet,
        admin.SourceUpdated,
        admin.SecretRotated,
        admin.Revoked,
        Replayed,
        WebhookAnswer,
        Status,
        BackfillJob,
        ItemsOfJobs,
        JobCreated,
        endpoints.EndpointIn,
        endpoints.EndpointPatch,
        endpoints.Endpoint,
        endpoints.Endpoints,
        endpoints.EndpointSecretRotated,
        endpoints.EndpointRotateIn,
        endpoints.EndpointReplayIn,
        endpoints.Replaying,
        endpoints.EndpointAttempts,
    ]
    _, components = msgspec.json.schema_components(resource_types, ref_template=_REF)
    kinds = list(dict.fromkeys(_EVENT_DATA.values()))
    data_schemas, evolution = msgspec.json.schema_components(kinds, ref_template=_EVOLUTION_REF)
    for schema in evolution.values():
        _message_ids(schema)
    components.update({f"evolution.{name}": schema for name, schema in evolution.items()})
    by_kind = dict(zip(kinds, data_schemas, strict=True))
    components["WebhookEnvelope"] = _envelope(
        {event: by_kind[kind] for event, kind in _EVENT_DATA.items()}
    )

    webhook = {
        "summary": "Evolution webhook (one event per request)",
        "description": "200 only once the event's rows are committed; Evolution retries 5xx.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/WebhookEnvelope"}}
            },
        },
        "responses": {
            "200": _ok("WebhookAnswer", "stored (committed)"),
            "202": _ok("WebhookAnswer", "quarantined (unknown instance), ignored or kept"),
            "400": _error("not JSON, not an Evolution envelope, or unusable data"),
            "401": _error("bad secret or apikey"),
            "413": _error("body over SENSE_MAX_BODY_BYTES"),
            "422": _error("an instance name or message id over 255 characters (not retried)"),
            "503": _error("overloaded or database unavailable (Retry-After)"),
        },
    }
    secret = _path("secret", "the source's webhook secret")
    unauthorized = _error("missing or unknown token")
    not_found = _error("not found (or another tenant's)")
    bad = _error("bad parameter")
    limit = {"type": "integer", "minimum": 1}
    paths: dict[str, Any] = {
        "/api/webhooks/evolution/{secret}": {"post": {**webhook, "parameters": [secret]}},
        "/api/webhooks/evolution/{secret}/{suffix}": {
            "post": {
                **webhook,
                "parameters": [
                    secret,
                    _path("suffix", "WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS suffix (ignored)"),
                ],
            }
        },
        "/api/v1/messages": {
            "get": {
                "summary": "Messages: newest first (`before`), or oldest first after a live "
                "cursor (`after`, from the stream's frames)",
                "security": _BEARER,
                "parameters": [
                    _query("instance", {"type": "string"}),
                    _query("chat", {"type": "string"}),
                    _query("before", {"type": "string", "pattern": BEFORE_CURSOR}),
                    _query("after", {"type": "string", "pattern": AFTER_CURSOR}),
                    _query("limit", {**limit, "maximum": 500}),
                ],
                "responses": {
                    "200": _ok("MessagePage"),
                    "400": _error("bad parameter (or both before and after)"),
                    "401": unauthorized,
                    "404": _error("no such instance"),
                },
            }
        },
        "/api/v1/messages/{instance}/{message_id}": {
            "get": {
                "summary": "One message",
                "security": _BEARER,
                "parameters": [_path("instance"), _path("message_id", pattern=MESSAGE_ID)],
                "responses": {"200": _ok("Message"), "401": unauthorized, "404": not_found},
            }
        },
        "/api/v1/chats": {
            "get": {
                "summary": "Chats with their last message and rolling analysis",
                "security": _BEARER,
                "parameters": [
                    _query("instance", {"type": "string"}),
                    _query("limit", {**limit, "maximum": 1000}),
                ],
                "responses": {
                    "200": _ok("ItemsOfChats"),
                    "400": bad,
                    "401": unauthorized,
                    "404": _error("no such instance"),
                },
            }
        },
        "/api/v1/instances": {
            "get": {
                "summary": "Instances with connection state and latest QR",
                "security": _BEARER,
                "responses": {"200": _ok("ItemsOfInstances"), "401": unauthorized},
            }
        },
        "/api/v1/backfill": {
            "get": {
                "summary": "The tenant's backfill jobs, newest first",
                "security": _BEARER,
                "parameters": [_query("limit", {**limit, "maximum": 500})],
                "responses": {"200": _ok("ItemsOfJobs"), "400": bad, "401": unauthorized},
            }
        },
        "/api/v1/search": {
            "get": {
                "summary": "Messages ranked by full-text match or by embedding similarity",
                "security": _BEARER,
                "parameters": [
                    _query(
                        "q",
                        {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": search.MAX_QUERY_CHARS,
                            "pattern": NON_BLANK,
                        },
                        required=True,
                    ),
                    _query("mode", {"type": "string", "enum": ["text", "semantic", ""]}),
                    _query("limit", {**limit, "maximum": 100}),
                    _query("instance", {"type": "string"}),
                    _query("chat", {"type": "string"}),
                ],
                "responses": {
                    "200": _ok("Results"),
                    "400": bad,
                    "401": unauthorized,
                    "404": _error("no such instance"),
                    "503": _error("semantic search unavailable (no worker to embed the query)"),
                },
            }
        },
        "/api/v1/stream": {
            "get": {
                "summary": "Live events (WebSocket)",
                "description": "A WebSocket (GET with Upgrade: websocket). Authenticate with "
                '`?token=` or a first message `{"token": ...}`; frames are JSON objects with a '
                "`type`: ready, message.created, message.updated, message.analyzed, "
                "instance.state, instance.qrcode, resync, heartbeat. Close 4401: bad token.",
                "parameters": [_query("token", {"type": "string"})],
                "responses": {"101": {"description": "Switching Protocols (WebSocket)"}},
            }
        },
        "/": {
            "get": {
                "summary": "Live dashboard (asks for a tenant token)",
                "responses": {
                    "200": {"description": "OK", "content": {"text/html": {"schema": {}}}}
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("Status")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: database reachable, migrations applied, registry loaded",
                "responses": {"200": _ok("Status"), "503": _error("not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    name = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": NON_BLANK}
    ref = {"type": "string", "minLength": 1, "description": "id or name"}
    require = {
        "type": ["boolean", "null"],
        "description": "refuse webhooks whose envelope presents no apikey",
    }
    evolution = {
        "evolution_url": {
            "type": ["string", "null"],
            "pattern": "^https?://[^/\\s?#]+\\S*$",
            "maxLength": 2000,
            "description": "REST base URL of the Evolution server (enables backfill)",
        },
        "evolution_apikey": {
            "type": ["string", "null"],
            "description": "its global key or an instance token (never returned)",
        },
    }
    admin_routes = {
        "/api/admin/tenants": ("TenantCreated", {"name": name}, ["name"], 201),
        "/api/admin/sources": (
            "SourceCreated",
            {
                "name": name,
                "require_apikey": {**require, "type": "boolean"},
                **evolution,
            },
            ["name"],
            201,
        ),
        "/api/admin/sources/{ref}": ("SourceUpdated", evolution, [], 200),
        "/api/admin/instances": (
            "InstanceCreated",
            {
                "tenant": ref,
                "source": ref,
                "name": name,
                "apikey": {"type": ["string", "null"]},
                "require_apikey": require,
            },
            ["tenant", "source", "name"],
            201,
        ),
        "/api/admin/sources/{ref}/instances/{name}/apikey": (
            "ApikeySet",
            {"apikey": {"type": ["string", "null"]}, "require_apikey": require},
            [],
            200,
        ),
        "/api/admin/tenants/{ref}/rotate-token": ("TokenRotated", {}, [], 200),
        "/api/admin/tenants/{ref}/revoke-token": ("Revoked", {}, [], 200),
        "/api/admin/sources/{ref}/rotate-secret": (
            "SecretRotated",
            {
                "overlap_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": admin.MAX_OVERLAP_SECONDS,
                    "default": 3600,
                }
            },
            [],
            200,
        ),
        "/api/admin/sources/{ref}/revoke-secret": ("Revoked", {}, [], 200),
        "/api/admin/quarantine/replay": (
            "Replayed",
            {"source": {"type": ["string", "null"]}, "instance": {"type": ["string", "null"]}},
            [],
            200,
        ),
    }
    for path, (answer, props, required, status) in admin_routes.items():
        paths[path] = {
            ("patch" if path == "/api/admin/sources/{ref}" else "post"): {
                "summary": "Admin: " + path.removeprefix("/api/admin/"),
                "security": _BEARER,
                **({"parameters": _admin_parameters(path)} if "{ref}" in path else {}),
                "requestBody": {
                    "required": bool(required),
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": props, "required": required}
                        }
                    },
                },
                "responses": {
                    str(status): _ok(answer),
                    "400": _error("not JSON"),
                    "401": _error("bad admin token"),
                    "403": _error("admin API disabled"),
                    "404": _error("unknown tenant or source"),
                    "409": _error("name taken"),
                    "413": _error("body over 64 KiB"),
                    "422": _error("invalid body"),
                },
            }
        }
    admin_errors = {
        "401": _error("bad admin token"),
        "403": _error("admin API disabled"),
    }
    iso = {"type": "string", "format": "date-time"}
    paths["/api/admin/backfill"] = {
        "post": {
            "summary": "Admin: ask Evolution for a window and merge what is missing (a job)",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "instance": name,
                                "from": iso,
                                "to": {**iso, "description": "default: now"},
                                "source": {"type": ["string", "null"], "description": "id or name"},
                                "tenant": {"type": ["string", "null"], "description": "id or name"},
                            },
                            "required": ["instance", "from"],
                        }
                    }
                },
            },
            "responses": {
                "202": _ok("JobCreated", "Accepted: the job is queued"),
                "400": _error("not JSON"),
                **admin_errors,
                "404": _error("no such instance"),
                "409": _error("a job for that instance is queued or running"),
                "413": _error("body over 64 KiB"),
                "422": _error("invalid body, or the source has no Evolution URL and key"),
            },
        },
        "get": {
            "summary": "Admin: the latest backfill jobs, newest first",
            "security": _BEARER,
            "responses": {"200": _ok("ItemsOfJobs"), **admin_errors},
        },
    }
    paths["/api/admin/backfill/{job_id}"] = {
        "get": {
            "summary": "Admin: one backfill job and its progress",
            "security": _BEARER,
            "parameters": [_path("job_id")],
            "responses": {
                "200": _ok("BackfillJob"),
                **admin_errors,
                "404": _error("no such job"),
            },
        }
    }
    paths.update(_endpoint_paths(unauthorized, bad, limit))
    # an instance that requires an apikey must be given one
    for path in ("/api/admin/instances", "/api/admin/sources/{ref}/instances/{name}/apikey"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["if"] = {
            "properties": {"require_apikey": {"const": True}},
            "required": ["require_apikey"],
        }
        body["schema"]["then"] = {
            "properties": {"apikey": {"type": "string", "minLength": 1}},
            "required": ["apikey"],
        }
    # Every API route answers 503 + Retry-After while Postgres (or Redis) is unreachable.
    for path, operations in paths.items():
        for operation in operations.values():
            if path.startswith("/api/") and "101" not in operation["responses"]:
                operation["responses"].setdefault(
                    "503", _error("database or Redis unavailable, retry later (Retry-After)")
                )
    return {
        "openapi": "3.1.0",
        "info": {"title": "sense-ingest", "version": "0.1.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
