"""One limit for names everywhere (255 characters): what can be registered can be posted and
read back, and a longer name is refused the same way at registration and at the webhook."""

from __future__ import annotations

from tests.integration.conftest import Deployment, upsert


async def test_a_255_character_instance_name_registers_posts_and_reads_back(
    deployment: Deployment,
) -> None:
    name = "i" * 255
    assert (await deployment.instance("acme", "evo", name)).status_code == 201
    r = await deployment.post(upsert(name, "LONGNAME1", "cabe"))
    assert r.status_code == 200, r.text
    got = await deployment.message("acme", name, "LONGNAME1")
    assert got.status_code == 200 and got.json()["text"] == "cabe"


async def test_a_256_character_name_is_refused_at_registration_and_at_the_webhook(
    deployment: Deployment,
) -> None:
    name = "i" * 256
    r = await deployment.instance("acme", "evo", name)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_name" and "1-255" in r.json()["detail"]
    for kind in ("tenants", "sources"):
        r = await deployment.admin(f"/api/admin/{kind}", {"name": name})
        assert r.status_code == 422 and "1-255" in r.json()["detail"], r.text
    r = await deployment.post(upsert(name, "LONGNAME2"))
    assert r.status_code == 422 and r.json()["error"] == "over_limit", r.text
    assert "255" in r.json()["detail"]
