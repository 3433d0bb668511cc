"""``GET /openapi.json``: the HTTP contract, with schemas generated from the msgspec types."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from service import admin, api

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(ref: str | None, description: str = "OK") -> dict[str, Any]:
    if ref is None:
        return {"description": description, "content": {"application/json": {"schema": {}}}}
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


class Error(msgspec.Struct):
    error: str
    detail: str


class ItemsOfChats(msgspec.Struct):
    items: list[api.Chat]


class ItemsOfInstances(msgspec.Struct):
    items: list[api.InstanceOut]


class Replayed(msgspec.Struct):
    replayed: int


class WebhookAnswer(msgspec.Struct):
    status: str


@cache
def document() -> dict[str, Any]:
    types = [
        Error,
        api.Message,
        api.MessagePage,
        ItemsOfChats,
        ItemsOfInstances,
        admin.TenantCreated,
        admin.SourceCreated,
        admin.InstanceCreated,
        Replayed,
        WebhookAnswer,
    ]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    secret = {"name": "secret", "in": "path", "required": True, "schema": {"type": "string"}}
    webhook = {
        "summary": "Evolution webhook (one event per request)",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": {
            "200": _ok("WebhookAnswer", "stored (committed)"),
            "202": _ok("WebhookAnswer", "quarantined (unknown instance) or ignored event"),
            "400": _error("not JSON / not an Evolution envelope"),
            "401": _error("bad secret or apikey"),
            "413": _error("body over SENSE_MAX_BODY_BYTES"),
            "503": _error("overloaded or database unavailable (Retry-After)"),
        },
    }
    unauthorized = _error("missing or unknown token")
    not_found = _error("not found (or another tenant's)")
    q = lambda name, schema: {"name": name, "in": "query", "required": False, "schema": schema}  # noqa: E731
    paths: dict[str, Any] = {
        "/api/webhooks/evolution/{secret}": {"post": {**webhook, "parameters": [secret]}},
        "/api/webhooks/evolution/{secret}/{suffix}": {
            "post": {
                **webhook,
                "parameters": [
                    secret,
                    {
                        "name": "suffix",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
            }
        },
        "/api/v1/messages": {
            "get": {
                "summary": "Messages, newest first (cursor pagination with `before`)",
                "security": _BEARER,
                "parameters": [
                    q("instance", {"type": "string"}),
                    q("chat", {"type": "string"}),
                    q("before", {"type": "string"}),
                    q("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                ],
                "responses": {
                    "200": _ok("MessagePage"),
                    "400": _error("bad parameter"),
                    "401": unauthorized,
                    "404": not_found,
                },
            }
        },
        "/api/v1/messages/{instance}/{message_id}": {
            "get": {
                "summary": "One message",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "instance",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {"200": _ok("Message"), "401": unauthorized, "404": not_found},
            }
        },
        "/api/v1/chats": {
            "get": {
                "summary": "Chats with their last message and rolling analysis",
                "security": _BEARER,
                "parameters": [
                    q("instance", {"type": "string"}),
                    q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {
                    "200": _ok("ItemsOfChats"),
                    "400": _error("bad parameter"),
                    "401": unauthorized,
                    "404": not_found,
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
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok(None)}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: database reachable, migrations applied",
                "responses": {"200": _ok(None), "503": _error("not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
    }
    admin_routes = {
        "/api/admin/tenants": ("TenantCreated", {"name": {"type": "string"}}, ["name"], 201),
        "/api/admin/sources": ("SourceCreated", {"name": {"type": "string"}}, ["name"], 201),
        "/api/admin/instances": (
            "InstanceCreated",
            {
                "tenant": {"type": "string"},
                "source": {"type": "string"},
                "name": {"type": "string"},
                "apikey": {"type": ["string", "null"]},
            },
            ["tenant", "source", "name"],
            201,
        ),
        "/api/admin/quarantine/replay": (
            "Replayed",
            {"source": {"type": ["string", "null"]}, "instance": {"type": ["string", "null"]}},
            [],
            200,
        ),
    }
    for path, (ref, props, required, status) in admin_routes.items():
        paths[path] = {
            "post": {
                "summary": "Admin: " + path.rsplit("/", 1)[-1],
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": props, "required": required}
                        }
                    },
                },
                "responses": {
                    str(status): _ok(ref),
                    "400": _error("not JSON"),
                    "401": _error("bad admin token"),
                    "403": _error("admin API disabled"),
                    "404": _error("unknown tenant or source"),
                    "409": _error("name taken"),
                    "422": _error("invalid body"),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sense-ingest", "version": "0.1.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
