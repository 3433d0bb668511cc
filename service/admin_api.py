"""The admin HTTP API (``SENSE_ADMIN_TOKEN``): register tenants, sources and instances, replay
quarantine, rotate and revoke tenant tokens and source secrets, ask for backfills. Each change
reloads this process's map at once (others follow by NOTIFY), so it holds from the very next
request."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import admin, backfill, db
from service.http import JSON, error
from service.requests import BodyTooLarge, body_refusal, read_json
from service.resources import ItemsOfJobs, JobCreated, job_from_row
from service.state import Services


def _admin_authorized(request: Request) -> Response | None:
    services: Services = request.app.state.services
    expected = services.settings.admin_token
    if not expected:
        return error(403, "forbidden", "admin API disabled: set SENSE_ADMIN_TOKEN")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # as bytes: compare_digest refuses non-ASCII str (any header text must get a 401, not a 500)
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        return error(401, "unauthorized", "admin token required", {"WWW-Authenticate": "Bearer"})
    return None


class TenantIn(msgspec.Struct):
    name: str


class SourceIn(msgspec.Struct):
    name: str
    require_apikey: bool = False
    evolution_url: str | None = None  # REST base URL of that Evolution server (backfill)
    evolution_apikey: str | None = None  # its global key or an instance token; never returned


class SourceUpdateIn(msgspec.Struct):
    evolution_url: str | None = None
    evolution_apikey: str | None = None


class InstanceIn(msgspec.Struct):
    tenant: str
    source: str
    name: str
    apikey: str | None = None
    require_apikey: bool | None = None


class ApikeyIn(msgspec.Struct):
    apikey: str | None = None
    require_apikey: bool | None = None


class RotateSecretIn(msgspec.Struct):
    overlap_seconds: float = 3600


class Empty(msgspec.Struct):
    pass


class ReplayIn(msgspec.Struct):
    source: str | None = None
    instance: str | None = None


class BackfillIn(msgspec.Struct):
    instance: str
    start: datetime = msgspec.field(name="from")
    end: datetime | None = msgspec.field(default=None, name="to")  # default: now
    source: str | None = None  # id or name, when the instance name is on several sources
    tenant: str | None = None


def _admin_route(kind: type[Any], action: Any, status: int = 201) -> Any:
    """A POST handler: admin token, body decoded as ``kind``, then ``action(services, body,
    **path_params)``."""

    async def handler(request: Request) -> Response:
        denied = _admin_authorized(request)
        if denied is not None:
            return denied
        services: Services = request.app.state.services
        try:
            payload = await read_json(request, kind)
            result = await action(services, payload, **request.path_params)
        except (msgspec.ValidationError, msgspec.DecodeError, BodyTooLarge) as exc:
            return body_refusal(exc)
        except admin.AdminError as exc:
            return error(exc.status, exc.code, exc.detail)
        return JSON(result, status_code=status)

    return handler


# Each registry change: the admin operation, then this process's map reloaded at once (the
# others follow by NOTIFY), so the change holds from this process's very next request.
def _registry_change(operation: Callable[..., Awaitable[Any]]) -> Any:
    async def action(s: Services, body: Any, **path: str) -> Any:
        done = await operation(s.pool, body, **path)
        await s.registry.load(s.pool)
        return done

    return action


_create_tenant = _registry_change(lambda pool, b: admin.create_tenant(pool, b.name))
_create_source = _registry_change(
    lambda pool, b: admin.create_source(
        pool, b.name, b.require_apikey, b.evolution_url, b.evolution_apikey
    )
)


async def _update_source(s: Services, body: SourceUpdateIn, ref: str) -> Any:
    return await admin.update_source(s.pool, ref, body.evolution_url, body.evolution_apikey)


_create_instance = _registry_change(
    lambda pool, b: admin.add_instance(pool, b.tenant, b.source, b.name, b.apikey, b.require_apikey)
)
_set_apikey = _registry_change(
    lambda pool, b, ref, name: admin.set_apikey(pool, ref, name, b.apikey, b.require_apikey)
)
_rotate_token = _registry_change(lambda pool, b, ref: admin.rotate_token(pool, ref))
_revoke_token = _registry_change(lambda pool, b, ref: admin.revoke_token(pool, ref))
_rotate_secret = _registry_change(
    lambda pool, b, ref: admin.rotate_secret(pool, ref, b.overlap_seconds)
)
_revoke_secret = _registry_change(lambda pool, b, ref: admin.revoke_secret(pool, ref))


async def _replay(s: Services, body: ReplayIn) -> Any:
    async with s.pool.acquire() as conn:
        result = await admin.replay_quarantine(conn, body.source, body.instance)
    s.batcher.run_hooks(result.committed)
    return {"replayed": result.replayed}


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def _request_backfill(s: Services, body: BackfillIn) -> Any:
    end = _utc(body.end) if body.end else datetime.now(UTC)
    try:
        async with s.pool.acquire() as conn:
            instance, _, _ = await backfill.instance_to_fill(
                conn, body.instance, body.source, body.tenant
            )
            job_id = await backfill.create(
                conn, instance, _utc(body.start), end, s.settings.backfill_max_window_seconds
            )
    except backfill.Busy as exc:
        raise admin.AdminError(
            409, exc.code, f"{exc} (GET /api/admin/backfill/{exc.job_id})"
        ) from None
    except backfill.BackfillError as exc:
        raise admin.AdminError(exc.status, exc.code, str(exc)) from None
    if s.backfill is not None:
        s.backfill.wakeup.set()
    return JobCreated(str(job_id))


async def _backfill_job(s: Services, body: Empty, job_id: str) -> Any:
    try:
        row = await s.pool.fetchrow(db.q("backfill_get"), uuid.UUID(job_id))
    except ValueError:
        row = None
    if row is None:
        raise admin.AdminError(404, "not_found", f"no backfill job {job_id}")
    return job_from_row(row)


async def _backfill_jobs(s: Services, body: Empty) -> Any:
    rows = await s.pool.fetch(db.q("backfill_list"), None, 200)
    return ItemsOfJobs([job_from_row(r) for r in rows])


# path, body type, action, status of success, method
_ROUTES: list[tuple[str, type[Any], Any, int, str]] = [
    ("/api/admin/tenants", TenantIn, _create_tenant, 201, "POST"),
    ("/api/admin/sources", SourceIn, _create_source, 201, "POST"),
    ("/api/admin/sources/{ref}", SourceUpdateIn, _update_source, 200, "PATCH"),
    ("/api/admin/instances", InstanceIn, _create_instance, 201, "POST"),
    ("/api/admin/quarantine/replay", ReplayIn, _replay, 200, "POST"),
    ("/api/admin/sources/{ref}/instances/{name:path}/apikey", ApikeyIn, _set_apikey, 200, "POST"),
    ("/api/admin/tenants/{ref}/rotate-token", Empty, _rotate_token, 200, "POST"),
    ("/api/admin/tenants/{ref}/revoke-token", Empty, _revoke_token, 200, "POST"),
    ("/api/admin/sources/{ref}/rotate-secret", RotateSecretIn, _rotate_secret, 200, "POST"),
    ("/api/admin/sources/{ref}/revoke-secret", Empty, _revoke_secret, 200, "POST"),
    ("/api/admin/backfill", BackfillIn, _request_backfill, 202, "POST"),
    ("/api/admin/backfill", Empty, _backfill_jobs, 200, "GET"),
    ("/api/admin/backfill/{job_id}", Empty, _backfill_job, 200, "GET"),
]


def routes() -> list[Route]:
    return [
        Route(path, _admin_route(kind, action, status=status), methods=[method])
        for path, kind, action, status, method in _ROUTES
    ]
