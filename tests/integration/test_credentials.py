"""Bearer credentials: expiry on an injected clock, key rotation and retirement, revocation recorded as events."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.tokens import InvalidToken, Keyring, Tokens
from infra.bootstrap import Container
from infra.cli import app as cli
from infra.settings import Settings
from services.access import Actor, Context, Role

ADMIN_CTX = Context(actor=Actor(Role.ADMIN, None, "root"), correlation_id="test")


def _events(baton: Container, prefix: str) -> list[dict[str, object]]:
    out = []
    for n in baton.store.select(0, 100_000):
        envelope = baton.codec.envelope(n)
        if envelope.name.startswith(prefix):
            out.append({"type": envelope.type, **envelope.data})
    return out


def test_expiry_reads_the_injected_clock(tmp_path: Path) -> None:
    now = [datetime(2026, 3, 2, 8, 0, tzinfo=UTC)]
    tokens = Tokens(Keyring.load(tmp_path), timedelta(hours=1), now=lambda: now[0])
    token = tokens.issue("community", "tishu", "wang")
    assert tokens.verify(token).unit == "tishu"
    now[0] += timedelta(minutes=59)
    assert tokens.verify(token).id == "wang"
    now[0] += timedelta(minutes=2)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)
    now[0] -= timedelta(days=1)
    with pytest.raises(InvalidToken, match="issued in the future"):
        tokens.verify(token)


def test_a_checked_signature_is_remembered_only_for_its_own_token_and_key(tmp_path: Path) -> None:
    keyring = Keyring.load(tmp_path)
    tokens = Tokens(keyring)
    token = tokens.issue("community", "tishu", "wang")
    assert tokens.verify_cached(token) == tokens.verify(token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    for other in (forged, f"{head}.{payload}."):
        with pytest.raises(InvalidToken):
            tokens.verify(other)
    keyring.keys["k1"] = b"another secret for the same key id, long enough"  # the key changed under its id
    with pytest.raises(InvalidToken):
        tokens.verify(token)


async def test_rotation_keeps_old_tokens_until_their_key_is_retired(baton: Container, tmp_path: Path) -> None:
    keyring = Keyring.load(tmp_path / "ring")
    tokens = Tokens(keyring)
    app = create_app(baton, tokens)
    old = tokens.issue("admin", None, "root")
    kid = keyring.rotate()
    baton.credentials.put_key_in_service(ADMIN_CTX, kid)
    new = tokens.issue("admin", None, "root")
    assert json.loads(_header(new))["kid"] == kid != json.loads(_header(old))["kid"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for token in (old, new):
            r = await client.get("/v1/org", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        baton.credentials.retire_key(ADMIN_CTX, "k1")
        tokens.refresh()
        r = await client.get("/v1/org", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 401 and "retired key" in r.json()["error"]["message"]
        assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {new}"})).status_code == 200
        keyring.remove("k1")
        r = await client.get("/v1/org", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 401 and "no longer holds" in r.json()["error"]["message"]
    assert [e["type"] for e in _events(baton, "credentials.")] == ["opened", "key_rotated", "key_retired"]
    stored = b"".join(n.state for n in baton.store.select(0, 100_000))
    assert all(secret not in stored for secret in keyring.keys.values())  # key ids only, never key material


async def test_revocation_is_an_event_and_takes_effect_at_once(
    client: httpx.AsyncClient, tokens: Tokens, baton: Container
) -> None:
    admin = {"Authorization": f"Bearer {tokens.issue('admin', None, 'root')}"}
    first, second = tokens.issue("community", "tishu", "wang"), tokens.issue("community", "tishu", "wang")
    other = tokens.issue("community", "tishu", "li")
    for token in (first, second, other):
        assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {token}"})).status_code == 200

    refused = await client.post(
        "/v1/tokens/revocations",
        json={"token": other, "reason": "not an admin"},
        headers={"Authorization": f"Bearer {first}"},
    )
    assert refused.status_code == 403
    for body, fragment in [
        ({"token": "not-a-token", "reason": "x"}, "only a token Baton issued"),
        ({"token": first, "actor": "wang", "reason": "x"}, "exactly one of token or actor"),
        ({"reason": "x"}, "exactly one of token or actor"),
    ]:
        r = await client.post("/v1/tokens/revocations", json=body, headers=admin)
        assert r.status_code == 422 and fragment in r.json()["error"]["message"], r.text

    r = await client.post("/v1/tokens/revocations", json={"token": first, "reason": "phone lost"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["revoked"] == "token" and r.json()["position"]
    refused = await client.get("/v1/org", headers={"Authorization": f"Bearer {first}"})
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {second}"})).status_code == 200
    again = await client.post("/v1/tokens/revocations", json={"token": first, "reason": "twice"}, headers=admin)
    assert again.status_code == 409

    await asyncio.sleep(0.01)  # tokens carry iat to the millisecond; the cutoff is the revocation's own time
    r = await client.post("/v1/tokens/revocations", json={"actor": "wang", "reason": "left the post"}, headers=admin)
    assert r.status_code == 201, r.text
    assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {second}"})).status_code == 401
    assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {other}"})).status_code == 200
    await asyncio.sleep(0.01)
    fresh = tokens.issue("community", "tishu", "wang")
    assert (await client.get("/v1/org", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200

    recorded = _events(baton, "credentials.")
    assert [e["type"] for e in recorded] == ["opened", "token_revoked", "actor_revoked"]
    assert recorded[1]["reason"] == "phone lost" and recorded[2]["actor_id"] == "wang"


async def test_a_revocation_from_the_cli_reaches_a_running_server_within_a_second(
    baton: Container, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BATON_STORE", settings.store)
    tokens = Tokens(Keyring.load(settings.data_dir))
    app = create_app(baton, tokens)
    token = tokens.issue("department", "PSB", "psb-desk")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/org", headers=headers)).status_code == 200
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["token", "revoke", "--token", token, "--reason", "desk moved"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["revoked"] == "token"
        statuses = []
        for _ in range(30):
            statuses.append((await client.get("/v1/org", headers=headers)).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 401 and len(statuses) <= 15, statuses

        rotated = await asyncio.to_thread(CliRunner().invoke, cli, ["token", "rotate"])
        assert rotated.exit_code == 0, rotated.output
        kid = rotated.stdout.split()[1]
        await asyncio.sleep(REFRESH_WAIT)
        tokens.refresh()
        assert tokens.keyring.signing == kid  # the running server signs with the key the CLI put in service
        refused = await asyncio.to_thread(CliRunner().invoke, cli, ["token", "retire", kid])
        assert refused.exit_code == 2 and "still signs" in refused.output


REFRESH_WAIT = 0.05


def _header(token: str) -> str:
    import base64

    head = token.split(".")[0]
    return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()
