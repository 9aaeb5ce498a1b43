"""Authentication and authorisation: API keys, TLS and mutual TLS, on a real socket.

A caller is known by an API key (``authorization: Bearer``) or a client certificate; a
tenant's client acts only for that tenant and only on its leases; an admin acts for all.
Refused calls reserve nothing.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from admitd import AdmitdServer, ManualClock, parse_config
from admitd._api.auth import hash_key
from admitd._cli import main as cli
from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.certs import CertificateAuthority
from support.harness import DEFAULT_CONFIG, Harness, MakeHarness
from support.health import SERVING, health

SEARCH_KEY, GATEWAY_KEY = "sk-search-0123456789", "sk-gateway-9876543210"
KEYS: dict[str, Any] = {
    "pools": [{"name": "p", "max_concurrency": 5}],
    "tenants": [{"name": "a"}, {"name": "b"}],
    "auth": {
        "allow_anonymous": False,
        "clients": [
            {"name": "a-service", "api_key_sha256": hash_key(SEARCH_KEY), "tenant": "a"},
            {"name": "gateway", "api_key_sha256": hash_key(GATEWAY_KEY), "admin": True},
        ],
    },
}


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def acquire(h: Harness, key: str | None, **fields: Any) -> pb.Lease:
    request = pb.AcquireRequest(pool="p", input_tokens=10, **fields)
    return await h.stub.Acquire(request, timeout=10, metadata=bearer(key) if key else None)


async def release(h: Harness, key: str | None, lease_id: str) -> pb.ReleaseResponse:
    request = pb.ReleaseRequest(lease_id=lease_id)
    return await h.stub.Release(request, timeout=10, metadata=bearer(key) if key else None)


async def in_flight(h: Harness) -> int:
    status = await h.stub.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=bearer(GATEWAY_KEY))
    return next(p.in_flight for p in status.pools if p.name == "p")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "credentials required"),
        (bearer("sk-wrong"), "unknown API key"),
        ((("authorization", SEARCH_KEY),), "must be 'Bearer <api key>'"),
        ((("authorization", "Basic YTpi"),), "must be 'Bearer <api key>'"),
        (bearer(hash_key(SEARCH_KEY)), "unknown API key"),  # the hash is not the key
    ],
    ids=["none", "wrong", "no-scheme", "basic", "the-hash"],
)
async def test_calls_without_a_valid_key_are_unauthenticated_and_reserve_nothing(
    make_harness: MakeHarness, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    h = await make_harness(KEYS)
    for call in (
        h.stub.Acquire(pb.AcquireRequest(tenant="a", pool="p", input_tokens=1), metadata=metadata),
        h.stub.GetStatus(pb.GetStatusRequest(), metadata=metadata),
        h.stub.Release(pb.ReleaseRequest(lease_id="00" * 16), metadata=metadata),
    ):
        failure = await h.fail(call)
        assert failure.code is grpc.StatusCode.UNAUTHENTICATED
        assert message in failure.message
    assert await in_flight(h) == 0


async def test_a_tenant_key_acts_only_for_its_tenant(make_harness: MakeHarness) -> None:
    h = await make_harness(KEYS)
    mine = await acquire(h, SEARCH_KEY, tenant="a")
    assert mine.tenant == "a"
    implied = await acquire(h, SEARCH_KEY)  # no tenant named: the key's own
    assert implied.tenant == "a"
    failure = await h.fail(acquire(h, SEARCH_KEY, tenant="b"))
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
    assert failure.message == "client 'a-service' may act only for tenant 'a', not 'b'"
    assert await in_flight(h) == 2  # the refused call reserved nothing


async def test_only_the_owner_may_release_or_renew_a_lease(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {
            **KEYS,
            "auth": {
                "allow_anonymous": False,
                "clients": [
                    *KEYS["auth"]["clients"],
                    {"name": "b", "api_key_sha256": hash_key("sk-b-key-123"), "tenant": "b"},
                ],
            },
        }
    )
    lease = await acquire(h, SEARCH_KEY)
    assert (await h.fail(release(h, "sk-b-key-123", lease.lease_id))).code is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    renew = pb.RenewRequest(lease_id=lease.lease_id)
    failure = await h.fail(h.stub.Renew(renew, metadata=bearer("sk-b-key-123")))
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
    assert await in_flight(h) == 1  # still held
    assert (await release(h, SEARCH_KEY, lease.lease_id)).charged_tokens == 10


async def test_an_admin_acts_for_every_tenant_and_sees_all_of_status(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(KEYS)
    lease = await acquire(h, GATEWAY_KEY, tenant="b")
    assert lease.tenant == "b"
    status = await h.stub.GetStatus(pb.GetStatusRequest(), metadata=bearer(GATEWAY_KEY))
    assert [t.name for t in status.tenants] == ["a", "b"]
    own = await h.stub.GetStatus(pb.GetStatusRequest(), metadata=bearer(SEARCH_KEY))
    assert [t.name for t in own.tenants] == ["a"]  # a tenant sees only itself
    assert [p.in_flight for p in own.pools] == [1]
    assert (await release(h, GATEWAY_KEY, lease.lease_id)).refunded_tokens == 0


async def test_anonymous_callers_act_for_any_tenant_when_allowed(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({**KEYS, "auth": {**KEYS["auth"], "allow_anonymous": True}})
    assert (await acquire(h, None, tenant="b")).tenant == "b"
    # A key is still checked: a wrong one is not taken for anonymity.
    assert (await h.fail(acquire(h, "sk-nope"))).code is grpc.StatusCode.UNAUTHENTICATED
    assert (await h.fail(acquire(h, SEARCH_KEY, tenant="b"))).code is (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_keys_rotate_with_a_config_reload(make_harness: MakeHarness) -> None:
    h = await make_harness(KEYS)
    rotated = {
        **h.engine.settings.model_dump(mode="json"),
        "auth": {
            "allow_anonymous": False,
            "clients": [{"name": "a-service", "api_key_sha256": hash_key("sk-new"), "tenant": "a"}],
        },
    }
    await h.engine.apply(parse_config(rotated))
    assert (await acquire(h, "sk-new")).tenant == "a"
    assert (await h.fail(acquire(h, SEARCH_KEY))).code is grpc.StatusCode.UNAUTHENTICATED


def test_hash_key_prints_the_hash_of_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("sk-abc\n"))
    assert cli(["hash-key"]) == 0
    # sha256("sk-abc"), computed independently with: printf sk-abc | sha256sum
    assert capsys.readouterr().out == (
        "1460db1b6902f8b1fc2a40d9381a24d0fd22c3bc1b2c6f999c521da73776fbe0\n"
    )
    assert cli(["hash-key", "--new"]) == 0
    key, digest = capsys.readouterr().out.split()
    assert key.startswith("admitd-")
    assert len(key) > 40
    assert digest == hash_key(key)


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and client certificates, on disk."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    (folder / "ca.crt").write_bytes(ca.pem)
    files = {"ca": folder / "ca.crt"}
    files["server_crt"], files["server_key"] = ca.issue("admitd", server=True).write(
        folder, "server"
    )
    for name in ("a-worker", "gateway", "stranger"):
        files[f"{name}_crt"], files[f"{name}_key"] = ca.issue(name).write(folder, name)
    other = CertificateAuthority("another CA")
    (folder / "other-ca.crt").write_bytes(other.pem)
    files["other_ca"] = folder / "other-ca.crt"
    files["other_crt"], files["other_key"] = other.issue("admitd", server=True).write(
        folder, "other"
    )
    return files


async def start(config: dict[str, Any]) -> AdmitdServer:
    settings = parse_config({**DEFAULT_CONFIG, **config})
    server = AdmitdServer(settings, clock=ManualClock())
    await server.start("127.0.0.1:0")
    return server


@pytest.fixture
async def servers() -> AsyncIterator[list[AdmitdServer]]:
    started: list[AdmitdServer] = []
    yield started
    for server in started:
        await server.stop(grace=0)


def tls_channel(port: int, ca: Path, client: tuple[Path, Path] | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def status_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await pb_grpc.AdmissionStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


async def test_tls_serves_tls_clients_only(
    pki: dict[str, Path], servers: list[AdmitdServer]
) -> None:
    tls = {"cert_file": str(pki["server_crt"]), "key_file": str(pki["server_key"])}
    server = await start({"tls": tls})
    servers.append(server)
    assert await status_code(tls_channel(server.port, pki["ca"])) is grpc.StatusCode.OK
    plaintext = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    assert await status_code(plaintext) is grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA refuses the server's certificate.
    assert await status_code(tls_channel(server.port, pki["other_ca"])) is (
        grpc.StatusCode.UNAVAILABLE
    )


async def test_mutual_tls_names_the_tenant_by_certificate(
    pki: dict[str, Path], servers: list[AdmitdServer]
) -> None:
    server = await start(
        {
            "tls": {
                "cert_file": str(pki["server_crt"]),
                "key_file": str(pki["server_key"]),
                "client_ca_file": str(pki["ca"]),
            },
            "auth": {
                "allow_anonymous": False,
                "clients": [
                    {"name": "a-worker", "cert_common_name": "a-worker", "tenant": "a"},
                    {"name": "gateway", "cert_common_name": "gateway", "admin": True},
                ],
            },
        }
    )
    servers.append(server)
    worker = (pki["a-worker_crt"], pki["a-worker_key"])
    channel = tls_channel(server.port, pki["ca"], worker)
    stub = pb_grpc.AdmissionStub(channel)
    lease = await stub.Acquire(pb.AcquireRequest(pool="p", input_tokens=3), timeout=5)
    assert lease.tenant == "a"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Acquire(pb.AcquireRequest(tenant="b", pool="p", input_tokens=3), timeout=5)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await channel.close()
    # No certificate: the handshake fails. A certificate naming no client: unauthenticated.
    assert await status_code(tls_channel(server.port, pki["ca"])) is grpc.StatusCode.UNAVAILABLE
    stranger = (pki["stranger_crt"], pki["stranger_key"])
    assert await status_code(tls_channel(server.port, pki["ca"], stranger)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    gateway = (pki["gateway_crt"], pki["gateway_key"])
    assert await status_code(tls_channel(server.port, pki["ca"], gateway)) is grpc.StatusCode.OK


async def test_a_rotated_certificate_serves_new_connections_without_a_restart(
    pki: dict[str, Path], servers: list[AdmitdServer], tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server_crt"], cert)
    shutil.copy(pki["server_key"], key)
    server = await start({"tls": {"cert_file": str(cert), "key_file": str(key)}})
    servers.append(server)
    assert await status_code(tls_channel(server.port, pki["ca"])) is grpc.StatusCode.OK
    # Rotate to a certificate of another CA, the way a Secret update replaces files.
    for source, target in ((pki["other_crt"], cert), (pki["other_key"], key)):
        staged = target.with_suffix(".new")
        shutil.copy(source, staged)
        staged.replace(target)
    assert await status_code(tls_channel(server.port, pki["other_ca"])) is grpc.StatusCode.OK
    assert await status_code(tls_channel(server.port, pki["ca"])) is grpc.StatusCode.UNAVAILABLE


async def test_the_plaintext_health_port_serves_health_only(
    pki: dict[str, Path], servers: list[AdmitdServer]
) -> None:
    tls = {"cert_file": str(pki["server_crt"]), "key_file": str(pki["server_key"])}
    server = await start({"tls": tls, "health_listen": "127.0.0.1:0"})
    servers.append(server)
    assert server.health_port not in (0, server.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        assert await health(channel) == SERVING
        stub = pb_grpc.AdmissionStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # no Admission in plaintext
            await stub.GetStatus(pb.GetStatusRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_status_cli_reaches_a_tls_server_with_an_api_key(
    pki: dict[str, Path],
    servers: list[AdmitdServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = {"cert_file": str(pki["server_crt"]), "key_file": str(pki["server_key"])}
    server = await start({**KEYS, "tls": tls})
    servers.append(server)
    target = f"127.0.0.1:{server.port}"
    args = ["status", "--target", target, "--ca-file", str(pki["ca"])]
    assert await asyncio.to_thread(cli, args) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("ADMITD_API_KEY", GATEWAY_KEY)
    assert await asyncio.to_thread(cli, args) == 0
    assert capsys.readouterr().out.startswith("POOL ")


async def test_a_tenant_key_sees_only_its_own_usage(make_harness: MakeHarness) -> None:
    h = await make_harness(KEYS)
    for key, tenant in ((SEARCH_KEY, "a"), (GATEWAY_KEY, "b")):
        lease = await acquire(h, key, tenant=tenant)
        await release(h, key, lease.lease_id)
    own = await h.stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(SEARCH_KEY))
    assert [r.tenant for r in own.rows] == ["a"]
    every = await h.stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(GATEWAY_KEY))
    assert [r.tenant for r in every.rows] == ["a", "b"]
    asked = pb.GetUsageRequest(tenant="b")
    failure = await h.fail(h.stub.GetUsage(asked, metadata=bearer(SEARCH_KEY)))
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
