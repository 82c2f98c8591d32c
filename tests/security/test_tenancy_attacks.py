"""Tenant escapes and secret leaks (issue 10): who may create projects, what operators see, where a
provider's secrets may be sent, which addresses a provider URL may reach, and secrets on screen and
on disk. Each test names its attacker and their steps."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from httpcore._backends.auto import AutoBackend
from pytest_django.fixtures import Settings

from console import services as console_services
from console.lib import http as console_http
from console.lib import netpolicy
from console.models import Project, Role
from models_registry import services as registry_services
from models_registry.models import Provider
from models_registry.providers.base import CANNOT_CONNECT, InferenceRequest
from models_registry.providers.pangu import TOKENS, PanguAdapter
from tests.chat.conftest import World, post
from tests.conftest import ROOT, Persona, embedded_env, free_port
from tests.factories import add_member, make_user
from tests.upstreams import pangu as pangu_sim

PROVIDER_KEY = "sk-provider-key-only-alice-knows-3f1e"
IAM_PASSWORD = "iam-password-only-alice-knows-77b2"
OPERATOR_REFUSAL = {"detail": "Operators may only submit and watch forecast jobs."}


# --- helpers -------------------------------------------------------------------------------------------
class Listener:
    """A host of the attacker's (or an upstream that echoes what it was sent): it records every request
    and answers with `status` and `body`, where {auth} becomes the Authorization header it received."""

    def __init__(self, *, status: int = 200, body: str = '{"data": []}') -> None:
        self.requests: list[dict[str, str]] = []
        self.status, self.body = status, body
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real upstreams

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length).decode(errors="replace") if length else ""
                listener.requests.append({"path": self.path, "body": payload, **dict(self.headers.items())})
                auth = self.headers.get("Authorization", "") or self.headers.get("X-Auth-Token", "")
                data = listener.body.replace("{auth}", auth).encode()
                self.send_response(listener.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


def _api(client: Client, method: str, path: str, body: object = None, **headers: str) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs |= {"data": json.dumps(body), "content_type": "application/json"}
    response = getattr(client, method)(f"/api/registry{path}", **kwargs)
    return response.status_code, response.json()


def _bearer(persona: Persona) -> str:
    return "Bearer " + console_services.api_key_create(user=persona.user, project=persona.project, name="t")[1]


def _check(provider: Provider) -> str:
    provider.refresh_from_db()
    result = asyncio.run(registry_services.provider_test_connection(provider=provider))
    assert result.ok is False
    return result.message


@pytest.fixture
def eve(alice: Persona) -> Persona:
    """A second admin of alice's project, who never learnt the provider's secrets."""
    user = make_user("eve")
    add_member(project=alice.project, user=user, role=Role.ADMIN)
    return Persona(user=user, project=alice.project)


# --- project creation -----------------------------------------------------------------------------------
def test_only_site_staff_create_projects_unless_the_setting_opens_it(
    carol: Persona, dave: Persona, client: Client, settings: Settings
) -> None:
    """Attacker: an operator (carol) or a member (dave) of alice's project, neither site staff.
    Steps: open the projects page, then POST a new project to it anyway, then call the service
    directly, hoping to become the admin of a project of their own and reach every admin-only rule."""
    before = Project.objects.count()
    for persona in (carol, dave):
        client.force_login(persona.user)
        page = client.get(reverse("console:project_list")).content.decode()
        assert "Create project" not in page and "New projects are created by site staff" in page
        response = client.post(reverse("console:project_list"), {"name": "mine", "description": ""})
        assert response.status_code == 403
        with pytest.raises(PermissionDenied):
            console_services.project_create(name="mine", owner=persona.user, by=persona.user)
    assert Project.objects.count() == before

    staff = make_user("sam", is_staff=True)
    client.force_login(staff)
    assert "Create project" in client.get(reverse("console:project_list")).content.decode()
    assert client.post(reverse("console:project_list"), {"name": "staff-made"}).status_code == 302
    assert Project.objects.get(name="staff-made").memberships.get().user == staff

    settings.ANYONE_CAN_CREATE_PROJECTS = True
    client.force_login(dave.user)
    assert client.post(reverse("console:project_list"), {"name": "dave-made"}).status_code == 302
    assert Project.objects.count() == before + 2


# --- operators ------------------------------------------------------------------------------------------
def test_operators_read_nothing_of_the_registry_api(alice: Persona, carol: Persona, client: Client) -> None:
    """Attacker: carol, an operator of alice's project (her role: submit and watch forecast jobs).
    Steps: list and fetch providers, models and deployments through the registry API with her API key,
    then with her console session, to learn alice's upstreams, model names and deployment ids."""
    provider = registry_services.provider_create(
        project=alice.project, by=None, fields={"slug": "ds", "kind": "openai_compatible", "name": "ds"}
    )
    model = registry_services.model_create(provider=provider, by=None, fields={"name": "chat-1"})
    deployment = registry_services.deployment_create(project=alice.project, model=model, by=None)
    paths = [
        "/providers",
        f"/providers/{provider.pk}",
        "/models",
        f"/models/{model.pk}",
        "/deployments",
        f"/deployments/{deployment.pk}",
    ]
    key = _bearer(carol)
    for path in paths:
        assert _api(client, "get", path, Authorization=key) == (403, OPERATOR_REFUSAL), path
    client.force_login(carol.user)
    for path in paths:
        assert _api(client, "get", path) == (403, OPERATOR_REFUSAL), path
    # alice, the admin, still reads all of it.
    assert _api(client, "get", "/models", Authorization=_bearer(alice))[1]["count"] == 1


def test_operators_get_no_registry_pages_and_no_links_to_them(alice: Persona, carol: Persona, client: Client) -> None:
    """Attacker: carol, an operator. Steps: follow the navigation, then type the registry pages' URLs."""
    provider = registry_services.provider_create(
        project=alice.project, by=None, fields={"slug": "ds", "kind": "openai_compatible", "name": "ds"}
    )
    model = registry_services.model_create(provider=provider, by=None, fields={"name": "chat-1"})
    client.force_login(carol.user)
    dashboard = client.get(reverse("console:dashboard")).content.decode()
    models_link = f'href="{reverse("models_registry:model_list")}"'
    assert models_link not in dashboard and f'href="{reverse("console:keys")}"' in dashboard
    for url in (
        reverse("models_registry:model_list"),
        reverse("models_registry:model_detail", args=[model.pk]),
        reverse("models_registry:provider_list"),
        reverse("models_registry:deployment_list"),
    ):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "Operators submit and watch forecast jobs" in response.content.decode()
        assert "chat-1" not in response.content.decode()
    client.force_login(alice.user)
    assert models_link in client.get(reverse("console:dashboard")).content.decode()


# --- secrets follow the URL -----------------------------------------------------------------------------
def test_moving_the_base_url_does_not_take_the_api_key_along(
    alice: Persona, eve: Persona, client: Client, listener: Listener
) -> None:
    """Attacker: eve, a co-admin of alice's project who never saw the provider's API key.
    Steps: PATCH the provider's base URL to a host of hers (API), or submit the edit form with it
    (page), leaving the key box empty; then press "Test connection" and read the key off her host."""
    provider = registry_services.provider_create(
        project=alice.project,
        by=alice.user,
        fields={"slug": "ds", "name": "ds", "kind": "openai_compatible", "base_url": "https://api.deepseek.example/v1"},
        secrets={"api_key": PROVIDER_KEY},
    )
    status, body = _api(
        client, "patch", f"/providers/{provider.pk}", {"base_url": listener.url + "/v1"}, Authorization=_bearer(eve)
    )
    assert status == 400 and list(body["errors"]) == ["api_key"]
    assert body["errors"]["api_key"] == [
        "The base URL moved to another host, where the stored API key would be sent: type it again, or clear it."
    ]
    client.force_login(eve.user)
    form = {"slug": "ds", "name": "ds", "kind": "openai_compatible", "base_url": listener.url + "/v1"}
    form |= {"timeout_seconds": "5", "quota_period": "total", "enabled": "on"}
    page = client.post(reverse("models_registry:provider_edit", args=[provider.pk]), form)
    assert page.status_code == 200 and "where the stored API key would be sent" in page.content.decode()
    provider.refresh_from_db()
    assert provider.base_url == "https://api.deepseek.example/v1" and provider.secrets() == {"api_key": PROVIDER_KEY}
    asyncio.run(registry_services.provider_test_connection(provider=provider))
    assert listener.requests == []

    # A path on the same host needs nothing typed; a new host with the key typed again, or cleared, is fine.
    registry_services.provider_update(
        provider=provider, by=eve.user, fields={"base_url": "https://API.deepseek.example:443/v2"}
    )
    registry_services.provider_update(
        provider=provider, by=eve.user, fields={"base_url": listener.url + "/v1"}, secrets={"api_key": "sk-eves-own"}
    )
    provider.refresh_from_db()
    asyncio.run(registry_services.provider_test_connection(provider=provider))
    assert [r["Authorization"] for r in listener.requests] == ["Bearer sk-eves-own"]


def test_moving_the_iam_endpoint_or_base_url_does_not_take_the_iam_password_or_token_along(
    alice: Persona, eve: Persona, client: Client, listener: Listener
) -> None:
    """Attacker: eve, a co-admin. Steps: point the Pangu provider's IAM endpoint at her host (to receive
    the IAM password at the next login), or its base URL (to receive the IAM token that login buys, or
    the token already cached), without typing the password."""
    sim = pangu_sim.serve(iam_user="alice-iam", iam_password=IAM_PASSWORD)
    try:
        provider = registry_services.provider_create(
            project=alice.project,
            by=alice.user,
            fields={"slug": "pg", "name": "pg", "kind": "pangu", "base_url": sim.url},
            config={"iam_endpoint": sim.url, "iam_username": "alice-iam", "iam_domain": "d", "project_id": "p"},
            secrets={"iam_password": IAM_PASSWORD},
        )
        TOKENS.clear()
        assert asyncio.run(registry_services.provider_test_connection(provider=provider)).ok
        cached = TOKENS.get(PanguAdapter(provider).token_cache_key())
        assert cached is not None

        key = _bearer(eve)
        for change, field in (
            ({"pangu": {"iam_endpoint": listener.url}}, "IAM endpoint"),
            ({"base_url": listener.url}, "base URL"),
        ):
            status, body = _api(client, "patch", f"/providers/{provider.pk}", change, Authorization=key)
            assert status == 400 and list(body["errors"]) == ["iam_password"], body
            assert body["errors"]["iam_password"] == [
                f"The {field} moved to another host, where the stored IAM password would be sent: "
                "type it again, or clear it."
            ]
        assert listener.requests == []

        # The cache key holds both endpoints: a provider moved elsewhere (its password typed again) never
        # sends the token cached for the old host; it logs in afresh.
        moved = Provider.objects.get(pk=provider.pk)
        moved.base_url = listener.url
        logins = sim.state.tokens_issued  # type: ignore[attr-defined]
        request = InferenceRequest(mode="chat", model="0" * 32, messages=[{"role": "user", "content": "hi"}])
        out = asyncio.run(PanguAdapter(moved).outgoing(request))
        assert out.headers["X-Auth-Token"] != cached.value
        assert sim.state.tokens_issued == logins + 1  # type: ignore[attr-defined]
    finally:
        TOKENS.clear()
        sim.stop()


# --- SSRF -----------------------------------------------------------------------------------------------
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/v1",
    "http://[fd00:ec2::254]/latest",
    "http://100.100.100.200/latest/meta-data",
    "http://168.63.129.16/machine",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://0.0.0.0:8001/v1",
    "http://2852039166/latest",  # 169.254.169.254 as one number,
    "http://0xa9fea9fe/latest",  # in hexadecimal,
    "http://0251.0376.0251.0376/latest",  # and in octal, as the C resolver reads them
]


def test_provider_urls_refuse_link_local_and_metadata_addresses_when_saved(
    alice: Persona, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker: a project admin (anyone, once project creation is open). Steps: save a provider whose
    base URL or IAM endpoint is a cloud-metadata address, literally or behind a name of theirs that
    resolves to one, then use "Test connection" to reach the instance's credentials."""
    real = socket.getaddrinfo

    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "metadata.attacker.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    key = _bearer(alice)
    refused = ["Refused: link-local and cloud-metadata addresses are never reachable from the console."]
    for url in [*METADATA_URLS, "http://metadata.attacker.example/latest"]:
        status, body = _api(
            client, "post", "/providers", {"slug": "x", "kind": "openai_compatible", "base_url": url}, Authorization=key
        )
        assert (status, body["errors"]) == (400, {"base_url": refused}), url
        pangu = {"iam_endpoint": url, "project_id": "p"}
        status, body = _api(
            client,
            "post",
            "/providers",
            {"slug": "y", "kind": "pangu", "base_url": "https://pangu.example", "pangu": pangu},
            Authorization=key,
        )
        assert (status, body["errors"]) == (400, {"iam_endpoint": refused}), url
    client.force_login(alice.user)
    form = {"slug": "z", "kind": "openai_compatible", "base_url": METADATA_URLS[0], "timeout_seconds": "5"}
    page = client.post(reverse("models_registry:provider_create"), form | {"quota_period": "total"})
    assert page.status_code == 200 and refused[0] in page.content.decode()
    assert Provider.objects.filter(project=alice.project).count() == 0


def test_every_new_connection_is_checked_so_dns_rebinding_reaches_nothing(
    alice: Persona, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker: a project admin with a DNS name of theirs. Steps: save the provider while the name
    resolves to a harmless address (it passes the save-time check), then switch the name to
    169.254.169.254 and press "Test connection" or send calls."""
    port = int(listener.url.rsplit(":", 1)[1])
    answers = {"rebind.attacker.example": ["127.0.0.1"]}
    dialled: list[str] = []

    async def resolve(host: str, port: int) -> list[netpolicy.IPAddress]:
        return [ipaddress.ip_address(a) for a in answers.get(host, [host])]

    # Every TCP connect that reaches the real network backend, i.e. every packet sent.
    original = AutoBackend.connect_tcp

    async def spy(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        dialled.append(host)
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(console_http, "resolve", resolve)
    monkeypatch.setattr(AutoBackend, "connect_tcp", spy)
    provider = registry_services.provider_create(
        project=alice.project,
        by=None,
        fields={
            "slug": "rb",
            "name": "rb",
            "kind": "openai_compatible",
            "base_url": f"http://rebind.attacker.example:{port}/v1",
        },
        secrets={"api_key": PROVIDER_KEY},
    )
    assert asyncio.run(registry_services.provider_test_connection(provider=provider)).ok
    assert len(listener.requests) == 1 and dialled == ["127.0.0.1"]

    answers["rebind.attacker.example"] = ["169.254.169.254"]
    assert _check(provider) == CANNOT_CONNECT
    answers["rebind.attacker.example"] = ["127.0.0.1", "fe80::1"]  # one bad address refuses the name
    assert _check(provider) == CANNOT_CONNECT
    assert len(listener.requests) == 1 and dialled == ["127.0.0.1"]  # no packet left for either


def test_the_address_check_costs_once_per_connection_not_per_request(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an attack but the price of the defence: pooled keep-alive connections are reused unchecked,
    so the gateway pays the check once per new connection (twice: the resolved address, then the
    connected one), never on every call."""
    checks: list[netpolicy.IPAddress] = []
    real = netpolicy.address_problem

    def counted(ip: netpolicy.IPAddress, port: int) -> str | None:
        checks.append(ip)
        return real(ip, port)

    monkeypatch.setattr(netpolicy, "address_problem", counted)

    async def calls() -> None:
        for _ in range(5 * console_http.SHARDS):
            assert (await console_http.async_client().get(listener.url + "/")).status_code == 200

    asyncio.run(calls())
    assert len(listener.requests) == 5 * console_http.SHARDS
    assert len(checks) == 2 * console_http.SHARDS  # one connection per pool shard


def test_a_connection_that_lands_on_a_refused_address_is_closed_before_use() -> None:
    """Attacker: a project admin whose name resolves to an allowed address while the connection ends up
    at another (a resolver or NAT in between). Steps: connect, and hope only the name was checked."""
    closed: list[bool] = []

    class Landed(httpcore.AsyncNetworkStream):
        def get_extra_info(self, info: str) -> Any:
            return ("169.254.169.254", 80) if info == "server_addr" else None

        async def aclose(self) -> None:
            closed.append(True)

    class Network(httpcore.AsyncNetworkBackend):
        async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
            return Landed()

    with pytest.raises(httpcore.ConnectError, match="connected address is not allowed"):
        asyncio.run(console_http.GuardedBackend(Network()).connect_tcp("127.0.0.1", 80))
    assert closed == [True]


def test_private_networks_can_be_refused_with_an_allow_list(world: World, client: Client, settings: Settings) -> None:
    """Attacker: a project admin on an install that opened project creation to everyone. Steps: point a
    provider at loopback or a private network (Redis, PostgreSQL, the unauthenticated embedded model
    server, an internal service) and call it through the gateway."""
    settings.UPSTREAM_ALLOW_PRIVATE = False
    chat = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
    answer = post(world.url + "/v1/chat/completions", chat, world.headers())
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_error", answer.text
    assert world.upstream.state.requests == []
    status, body = _api(
        client,
        "post",
        "/providers",
        {"slug": "redis", "kind": "openai_compatible", "base_url": "http://10.1.2.3:6379/v1"},
        Authorization=f"Bearer {world.key}",
    )
    assert status == 400 and body["errors"]["base_url"] == [f"Refused: {netpolicy.PRIVATE_MESSAGE}."]
    # The embedded model server stays reachable (its host and port only), and so does an allowed network.
    settings.LOCAL_LLM_URL = "http://127.0.0.1:8001/v1"
    assert netpolicy.address_problem(ipaddress.ip_address("127.0.0.1"), 8001) is None
    assert netpolicy.address_problem(ipaddress.ip_address("127.0.0.1"), 6379) == netpolicy.PRIVATE_MESSAGE
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    answer = post(world.url + "/v1/chat/completions", chat, world.headers())
    assert answer.status_code == 200 and len(world.upstream.state.requests) == 1


def test_test_connection_does_not_map_the_network(alice: Persona, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacker: a project admin scanning the console's network. Steps: point a provider at one address
    after another (a closed port, a policy-refused address, a name that does not resolve, a non-HTTP
    service) and read what "Test connection" says about each."""
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen()

    def serve_banner() -> None:
        conn, _ = banner.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n")
        conn.recv(4096)
        conn.close()

    threading.Thread(target=serve_banner, daemon=True).start()
    closed = free_port()
    messages: list[str] = []
    for url in (f"http://127.0.0.1:{closed}/v1", "http://[fe80::1]:80/v1", "http://no-such-host.invalid/v1"):
        # Made as if saved before the policy existed: each address meets it at connect time.
        provider = Provider.objects.create(
            project=alice.project, slug=f"p{len(messages)}", kind="openai_compatible", base_url=url, timeout_seconds=2
        )
        messages.append(_check(provider))
    assert messages == [CANNOT_CONNECT] * 3
    provider = Provider.objects.create(
        project=alice.project,
        slug="ssh",
        kind="openai_compatible",
        base_url=f"http://127.0.0.1:{banner.getsockname()[1]}/v1",
        timeout_seconds=2,
    )
    assert _check(provider) == "The upstream did not answer in HTTP."
    banner.close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, '{"error": {"message": "bad request, you sent {auth}", "type": "invalid_request_error"}}'),
        (200, '{"error": {"message": "internal failure for credential {auth}"}}'),
        (500, "<html>upstream crashed handling {auth}</html>"),
    ],
)
def test_upstream_errors_relayed_to_callers_never_carry_the_provider_key(world: World, status: int, body: str) -> None:
    """Attacker: a member of the project (who may call models, but must never learn the provider's key).
    Steps: call a model whose upstream echoes the credentials it received in its error message, and read
    the error the gateway relays."""
    echo = Listener(status=status, body=body)
    try:
        registry_services.provider_update(
            provider=world.provider, by=None, fields={"base_url": echo.url + "/v1"}, secrets={"api_key": PROVIDER_KEY}
        )
        chat = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
        answer = post(world.url + "/v1/chat/completions", chat, world.headers())
        assert len(echo.requests) == 1 and echo.requests[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
        assert answer.status_code >= 400 and "***" in answer.text, answer.text
        assert PROVIDER_KEY not in answer.text and PROVIDER_KEY[:12] not in answer.text
    finally:
        echo.stop()


# --- secrets on screen and on disk ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["api", "ak"])
def test_a_new_secret_is_shown_once_and_never_kept_in_the_session(alice: Persona, client: Client, kind: str) -> None:
    """Attacker: whoever later reads the session store (a database backup, the django_session table) or
    replays a copy of the session from before the keys page was loaded again. Steps: create a key, then
    read the session row; load the keys page twice; put the session's old contents back and load again."""
    client.force_login(alice.user)
    response = client.post(reverse("console:keys"), {"kind": kind, f"{kind}-name": "ci-bot"})
    assert response.status_code == 302
    session = Session.objects.get(session_key=client.session.session_key)
    raw_row = session.session_data + json.dumps(session.get_decoded())
    stored = dict(client.session)

    first = client.get(reverse("console:keys")).content.decode()
    assert 'id="created-secret"' in first
    secret = first.split('<code id="created-secret">', 1)[1].split("</code>", 1)[0]
    assert len(secret) >= 40 and secret not in raw_row
    assert 'id="created-secret"' not in client.get(reverse("console:keys")).content.decode()

    replay = client.session
    replay.update(stored)
    replay.save()
    assert 'id="created-secret"' not in client.get(reverse("console:keys")).content.decode()


def test_data_dir_and_its_files_are_owner_only(tmp_path: Path) -> None:
    """Attacker: another local account on the machine. Steps: read DATA_DIR's SQLite database (password
    hashes, sessions, encrypted provider secrets), its queue messages and results, even when the
    console was started under a permissive umask or DATA_DIR was made by an older version."""
    data_dir = tmp_path / "data"
    (data_dir / "broker").mkdir(parents=True)
    os.chmod(data_dir, 0o755)  # as an older version left it
    script = (
        "import os; os.umask(0o022)\n"
        "from console.datadir import prepare_data_dir; prepare_data_dir()\n"
        "import django; os.environ['DJANGO_SETTINGS_MODULE'] = 'console.settings'; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c: c.execute('create table t (x int)'); c.execute('insert into t values (1)')\n"
        "from console.celery import app\n"
        "app.send_task('console.nothing')\n"
        "from django.conf import settings\n"
        "open(os.path.join(settings.DATA_DIR, 'results', 'r.json'), 'w').write('{}')\n"
    )
    env = embedded_env(data_dir, SECRET_KEY="", DJANGO_SETTINGS_MODULE="console.settings")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    modes = {str(p.relative_to(data_dir)): stat.S_IMODE(p.stat().st_mode) for p in [data_dir, *data_dir.rglob("*")]}
    assert modes["."] == 0o700
    # (the -wal file is gone once the last connection closes; while it lives it has the database's mode)
    assert {"console.sqlite3", "broker/queue", "results/r.json", "secret_key"} <= set(modes)
    queued = [name for name in modes if name.startswith("broker/queue/")]
    assert len(queued) == 1
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert loose == {}
