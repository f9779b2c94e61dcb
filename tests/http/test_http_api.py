"""The HTTP API: main flows through a real uvicorn server on 127.0.0.1, and the many
validation cases through httpx's ASGI transport. Every refused submission is checked
three ways: the status, an error message that names the problem, and an untouched store.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge

from mxpress.errors import ConfigError, QueueError
from mxpress.queue.store import MessageState, NewMessage, RecipientState
from mxpress.server.http import api_key_digest, build_http_app, new_api_key, serve_http
from tests.http.fake_store import T0, FakeStore

KEY = "k-" + "x" * 40
AUTH = {"Authorization": f"Bearer {KEY}"}
KEYS = {"billing": api_key_digest(KEY)}

AppFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def make_client(store: FakeStore) -> AsyncIterator[AppFactory]:
    """A client for an app built with the given options, over the ASGI transport."""
    clients: list[httpx.AsyncClient] = []

    def make(**options: Any) -> httpx.AsyncClient:
        app = build_http_app(store, api_keys=options.pop("api_keys", KEYS), **options)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(make_client: AppFactory) -> httpx.AsyncClient:
    return make_client()


@pytest.fixture
async def live(store: FakeStore) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the app served by a real uvicorn server on a free loopback port."""
    app = build_http_app(store, api_keys=KEYS, max_message_size=64 * 1024)
    handle = await serve_http(app, "127.0.0.1", 0)
    assert handle.port > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.port}", headers=AUTH) as c:
        yield c
    await handle.stop()


def message(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "app@example.org",
        "to": ["alice@example.com"],
        "subject": "Hello",
        "text": "Hi Alice",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def parse(data: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def assert_error(response: httpx.Response, status: int, *names: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    for name in names:
        assert name in error["message"], (name, error["message"])


# --- through a real server ----------------------------------------------------------


async def test_submit_and_follow_over_a_real_server(
    live: httpx.AsyncClient, store: FakeStore
) -> None:
    r = await live.post(
        "/v1/messages",
        json=message(cc=["bob@example.net"], bcc=["audit@example.org"], html="<p>Hi</p>"),
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["recipients"] == ["alice@example.com", "bob@example.net", "audit@example.org"]
    assert r.headers["location"] == f"/v1/messages/{body['id']}"
    [stored] = store.enqueued
    assert stored.sender == "app@example.org" and stored.origin == "http:billing"
    assert tuple(stored.recipients) == tuple(body["recipients"])
    assert body["size"] == len(stored.data)
    sent = parse(stored.data)
    assert sent["To"] == "alice@example.com" and sent["Cc"] == "bob@example.net"
    assert sent["Bcc"] is None and b"audit@" not in stored.data  # only in the envelope
    assert sent["Message-ID"] == body["message_id"]
    assert b"\r\n" in stored.data and b"\n" not in stored.data.replace(b"\r\n", b"")

    status = (await live.get(r.headers["location"])).json()
    assert status["id"] == body["id"] and status["state"] == "active"
    assert status["origin"] == "http:billing" and status["sender"] == "app@example.org"
    assert [x["address"] for x in status["recipients"]] == body["recipients"]
    assert {x["state"] for x in status["recipients"]} == {"pending"}
    assert status["created_at"] == "2023-11-14T22:13:20.000Z"  # T0 as RFC 3339


async def test_queue_admin_over_a_real_server(live: httpx.AsyncClient, store: FakeStore) -> None:
    ids = []
    for rcpt in ("a@one.example", "b@two.example", "c@two.example"):
        r = await live.post("/v1/messages", json=message(to=[rcpt]))
        ids.append(r.json()["id"])
    store.set_recipient(
        ids[1], 0, state=RecipientState.DEFERRED, attempts=1, next_attempt=T0 + 600,
        last_reply="451 4.7.1 try later", last_host="mx.two.example",
    )  # fmt: skip
    store.set_recipient(ids[2], 0, state=RecipientState.DELIVERED, attempts=1)

    page = (await live.get("/v1/queue", params={"domain": "two.example"})).json()
    assert [m["id"] for m in page["messages"]] == ids[1:] and page["next_after"] is None
    page = (await live.get("/v1/queue", params={"recipient_state": "deferred"})).json()
    [deferred] = page["messages"]
    assert deferred["recipients"][0]["last_reply"] == "451 4.7.1 try later"
    assert deferred["recipients"][0]["next_attempt"] == "2023-11-14T22:23:20.000Z"
    page = (await live.get("/v1/queue", params={"limit": 2})).json()
    assert [m["id"] for m in page["messages"]] == ids[:2] and page["next_after"] == ids[1]
    page = (await live.get("/v1/queue", params={"limit": 2, "after": ids[1]})).json()
    assert [m["id"] for m in page["messages"]] == ids[2:] and page["next_after"] is None

    r = await live.post(f"/v1/queue/{ids[0]}/hold")
    assert r.status_code == 200 and r.json() == {"id": ids[0], "state": "held"}
    page = (await live.get("/v1/queue", params={"state": "held"})).json()
    assert [m["id"] for m in page["messages"]] == [ids[0]]
    assert (await live.post(f"/v1/queue/{ids[0]}/release")).json()["state"] == "active"
    assert_error(await live.post(f"/v1/queue/{ids[0]}/release"), 409, "not on hold")
    assert_error(await live.post(f"/v1/queue/{ids[2]}/hold"), 409, "done")

    assert (await live.post(f"/v1/queue/{ids[1]}/retry")).json() == {"id": ids[1], "retried": 1}
    assert (await live.post("/v1/queue/retry")).json() == {"retried": 0}
    counts = (await live.get("/v1/queue/counts")).json()
    assert counts["messages"] == {"active": 2, "held": 0, "done": 1}
    assert counts["recipients"]["deferred"] == 1 and counts["recipients"]["pending"] == 1

    r = await live.delete(f"/v1/queue/{ids[0]}")
    assert r.status_code == 204 and r.content == b""
    assert_error(await live.get(f"/v1/messages/{ids[0]}"), 404, ids[0])
    assert_error(await live.delete(f"/v1/queue/{ids[0]}"), 404, ids[0])


async def test_open_endpoints_and_auth_over_a_real_server(live: httpx.AsyncClient) -> None:
    anonymous = {"Authorization": ""}
    r = await live.get("/healthz", headers=anonymous)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    doc = (await live.get("/openapi.json", headers=anonymous)).json()
    assert doc["openapi"].startswith("3.1") and "/v1/messages" in doc["paths"]
    await live.get("/v1/queue/counts")
    r = await live.get("/metrics", headers=anonymous)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert (
        'mxpress_http_requests_total{method="GET",route="/v1/queue/counts",status="200"} 1.0'
        in r.text
    )
    r = await live.get("/v1/queue", headers=anonymous)
    assert_error(r, 401, "missing API key")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_oversize_body_over_a_real_server(live: httpx.AsyncClient, store: FakeStore) -> None:
    # The limit is 2 x 64 KiB + 64 KiB; the Content-Length alone says it is too big.
    r = await live.post("/v1/messages", json=message(text="x" * 200_000))
    assert_error(r, 413, "request body exceeds")
    assert store.calls == []


async def test_replies_are_not_held_back_by_nagle(live: httpx.AsyncClient) -> None:
    # Without TCP_NODELAY on the accepted sockets each reply waits ~40 ms for a delayed
    # ACK (10 requests: ~0.4 s); with it, about a millisecond each.
    await live.get("/healthz")
    start = time.monotonic()
    for _ in range(10):
        await live.get("/v1/queue/counts")
    assert time.monotonic() - start < 0.25


async def test_serve_http_stops_cleanly(store: FakeStore) -> None:
    handle = await serve_http(build_http_app(store, api_keys=KEYS), "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.port}") as c:
        assert (await c.get("/healthz")).status_code == 200
    await handle.stop()
    await handle.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", handle.port)


async def test_serve_http_reports_a_busy_port(store: FakeStore) -> None:
    app = build_http_app(store, api_keys=KEYS)
    handle = await serve_http(app, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await serve_http(build_http_app(store, api_keys=KEYS), "127.0.0.1", handle.port)
    finally:
        await handle.stop()


async def test_sqlite_queue_end_to_end(tmp_path: Path) -> None:
    from mxpress.queue.sqlite import SQLiteQueue

    async with SQLiteQueue(tmp_path / "queue.sqlite3", group_commit_window=0) as queue:
        woken: list[str] = []
        app = build_http_app(queue, api_keys=KEYS, on_enqueued=woken.append)
        handle = await serve_http(app, "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{handle.port}", headers=AUTH
            ) as c:
                r = await c.post("/v1/messages", json=message(bcc=["x@example.net"]))
                assert r.status_code == 202, r.text
                message_id = r.json()["id"]
                assert woken == [message_id]
                stored = await queue.get(message_id, with_data=True)
                assert stored is not None and stored.data is not None
                assert stored.origin == "http:billing" and b"x@example.net" not in stored.data
                status = (await c.get(f"/v1/messages/{message_id}")).json()
                assert [x["address"] for x in status["recipients"]] == [
                    "alice@example.com",
                    "x@example.net",
                ]
                assert (await c.post(f"/v1/queue/{message_id}/hold")).status_code == 200
                assert (await queue.get(message_id)).state == MessageState.HELD  # type: ignore[union-attr]
                listed = (await c.get("/v1/queue", params={"state": "held"})).json()
                assert [m["id"] for m in listed["messages"]] == [message_id]
                assert (await c.delete(f"/v1/queue/{message_id}")).status_code == 204
                assert await queue.get(message_id) is None
        finally:
            await handle.stop()


# --- durability ---------------------------------------------------------------------


class SlowStore(FakeStore):
    """enqueue waits until the test lets it finish (as a slow fsync would)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.proceed = asyncio.Event()

    async def enqueue(self, message: NewMessage) -> str:
        self.entered.set()
        await self.proceed.wait()
        return await super().enqueue(message)


async def test_202_only_after_enqueue_returned() -> None:
    store = SlowStore()
    woken: list[str] = []
    app = build_http_app(store, api_keys=KEYS, on_enqueued=woken.append)
    handle = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.port}", headers=AUTH) as c:
            request = asyncio.create_task(c.post("/v1/messages", json=message()))
            await asyncio.wait_for(store.entered.wait(), 5)
            await asyncio.sleep(0.05)
            assert not request.done() and woken == []  # no reply while the store works
            store.proceed.set()
            r = await asyncio.wait_for(request, 5)
        assert r.status_code == 202 and woken == [r.json()["id"]]
    finally:
        await handle.stop()


async def test_store_failure_is_503_and_nothing_is_acknowledged(
    client: httpx.AsyncClient, store: FakeStore
) -> None:
    store.fail_with = QueueError("database is locked")
    r = await client.post("/v1/messages", json=message())
    assert_error(r, 503, "database is locked")
    assert r.headers["retry-after"] == "5"
    assert store.enqueued == [] and store.messages == {}
    assert_error(await client.get("/v1/queue"), 503, "unavailable")


async def test_unexpected_store_crash_is_a_json_500(
    client: httpx.AsyncClient, store: FakeStore
) -> None:
    store.fail_with = RuntimeError("boom")
    assert_error(await client.post("/v1/messages", json=message()), 500, "internal error")
    assert store.enqueued == []


async def test_failing_wakeup_does_not_hide_the_accepted_message(
    make_client: AppFactory, store: FakeStore
) -> None:
    def wake(message_id: str) -> None:
        raise RuntimeError("scheduler gone")

    client = make_client(on_enqueued=wake)
    r = await client.post("/v1/messages", json=message())
    assert r.status_code == 202 and r.json()["id"] in store.messages


# --- refused submissions: status, a message naming the problem, nothing stored -------

ATTACHMENT = {"filename": "a.txt", "content_type": "text/plain", "content_base64": "aGk="}


def attach(**changes: Any) -> dict[str, Any]:
    return message(attachments=[{**ATTACHMENT, **changes}])


RAW = "From: app@example.org\nTo: alice@example.com\nSubject: hi\n\nbody\n"

BAD_MESSAGES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("unknown key", message(fromm="x"), ("unknown field 'fromm'",)),
    ("unknown attachment key", attach(name="a"),
     ("'attachments[0].name'",)),
    ("malformed from", message(**{"from": "not-an-address"}), ("'from'", "not-an-address")),
    ("malformed to", message(to=["ok@example.com", "a@b@example.com"]), ("'to[1]'", "a@b@")),
    ("angle brackets", message(cc=["<x@example.com>"]), ("'cc[0]'", "'<' or '>'")),
    ("space in bcc", message(bcc=["a b@example.com"]), ("'bcc[0]'", "space")),
    ("CRLF in address", message(to=["a@example.com\r\nRCPT TO:<x@evil>"]), ("'to[0]'",)),
    ("bare postmaster", message(to=["postmaster"]), ("'to[0]'", "no domain")),
    ("from missing", message(**{"from": ...}), ("'from' is required",)),
    ("no recipients", message(to=[]), ("at least one recipient",)),
    ("to not a list", message(to="alice@example.com"), ("'to' must be an array",)),
    ("address not a string", message(to=[42]), ("'to[0]' must be a string",)),
    ("CRLF in subject", message(subject="Hi\r\nBcc: victim@example.net"),
     ("'subject'", "header injection")),
    ("LF in subject", message(subject="Hi\nX-Evil: 1"), ("'subject'", "U+000A")),
    ("NUL in header", message(headers={"X-Tag": "a\x00b"}), ("'X-Tag'", "U+0000")),
    ("CRLF in header", message(headers={"X-Tag": "a\r\nBcc: x@evil.example"}),
     ("'X-Tag'", "header injection")),
    ("U+2028 in header", message(headers={"X-Tag": "a\u2028b"}), ("'X-Tag'", "U+2028")),
    ("bad header name", message(headers={"Bad Header": "x"}), ("'Bad Header'", "not valid")),
    ("colon in header name", message(headers={"X:Y": "x"}), ("'X:Y'", "not valid")),
    ("reserved header", message(headers={"bcc": "x@example.net"}), ("'bcc'", "cannot be set")),
    ("header value not a string", message(headers={"X-N": 1}), ("'X-N'", "must be a string")),
    ("subject not a string", message(subject=5), ("'subject' must be a string",)),
    ("html not a string", message(html=["x"]), ("'html' must be a string",)),
    ("bad base64", attach(content_base64="!!!"),
     ("'attachments[0].content_base64'", "base64")),
    ("multipart attachment", attach(content_type="multipart/mixed"),
     ("'attachments[0].content_type'",)),
    ("content type with params", attach(content_type="text/plain; a=b"),
     ("'attachments[0].content_type'",)),
    ("filename missing", message(attachments=[{"content_base64": "aGk="}]),
     ("'attachments[0].filename' is required",)),
    ("CRLF in filename", attach(filename="a\r\n.txt"),
     ("'attachments[0].filename'",)),
    ("attachment not an object", message(attachments=["a.txt"]), ("'attachments[0]'",)),
    ("raw with subject", {"raw": RAW, "subject": "x"}, ("'subject' cannot be combined",)),
    ("raw without From", {"raw": "To: a@example.com\n\nbody\n"}, ("'raw'", "no From header")),
    ("raw with two From", {"raw": "From: a@example.org\n" + RAW}, ("'raw'", "more than one From")),
    ("raw garbage", {"raw": "hello world\n"}, ("'raw'", "not a header field")),
    ("raw long line", {"raw": RAW + "x" * 1200 + "\n"}, ("'raw'", "line of 1200 octets")),
    ("raw without recipients", {"raw": "From: a@example.org\nSubject: x\n\nbody\n"},
     ("'raw'", "To, Cc or Bcc", "'to'")),
    ("raw with empty to", {"raw": RAW, "to": []}, ("'to' is empty",)),
    ("raw with bad From address", {"raw": RAW.replace("app@example.org", "app@")},
     ("raw From header", "empty domain")),
    ("raw with bad envelope", {"raw": RAW, "to": ["nobody"]}, ("'to[0]'",)),
    ("raw empty", {"raw": ""}, ("'raw' is empty",)),
    ("raw not a string", {"raw": {"x": 1}}, ("'raw' must be a string",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "names"), [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES]
)
async def test_bad_message_is_refused_and_not_stored(
    client: httpx.AsyncClient, store: FakeStore, body: dict[str, Any], names: tuple[str, ...]
) -> None:
    assert_error(await client.post("/v1/messages", json=body), 400, *names)
    assert store.enqueued == [] and "enqueue" not in store.calls


BAD_BODIES = [
    ("not JSON", b"{from: 1}", "not valid JSON"),
    ("JSON array", b"[]", "must be a JSON object"),
    ("duplicate key", b'{"from": "a@example.org", "from": "b@example.org"}', "'from' twice"),
    ("NaN", b'{"from": NaN}', "NaN is not a JSON number"),
    ("not UTF-8", b'{"from": "\xff"}', "not valid JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize(
    ("body", "name"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_json_is_refused(
    client: httpx.AsyncClient, store: FakeStore, body: bytes, name: str
) -> None:
    r = await client.post(
        "/v1/messages", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, name)
    assert store.calls == []


async def test_non_json_body_is_415(client: httpx.AsyncClient, store: FakeStore) -> None:
    r = await client.post("/v1/messages", content=RAW, headers={"Content-Type": "message/rfc822"})
    assert_error(r, 415, "application/json")
    assert store.calls == []


async def test_oversize_request_and_message_are_413(
    make_client: AppFactory, store: FakeStore
) -> None:
    client = make_client(max_message_size=2000, max_request_size=10_000)
    # Streamed (no Content-Length): refused while reading.
    chunks = [json.dumps(message(text="x" * 20_000)).encode()]

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    r = await client.post(
        "/v1/messages", content=stream(), headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "request body exceeds the limit of 10000 octets")
    # Within the request limit, but the built message is over the message limit.
    data = base64.b64encode(b"\x00" * 3000).decode()
    r = await client.post(
        "/v1/messages", json=message(attachments=[{**ATTACHMENT, "content_base64": data}])
    )
    assert_error(r, 413, "the limit is 2000 octets")
    r = await client.post("/v1/messages", json={"raw": RAW + ("y" * 900 + "\n") * 3})
    assert_error(r, 413, "the limit is 2000 octets")
    assert store.enqueued == []


async def test_too_many_recipients(make_client: AppFactory, store: FakeStore) -> None:
    client = make_client(max_recipients=2)
    r = await client.post("/v1/messages", json=message(bcc=["a@example.com"] * 3))
    assert_error(r, 400, "'bcc' has 3 addresses", "at most 2")
    raw = "From: a@example.org\nTo: b@example.com, c@example.com\nCc: d@example.com\n\nhi\n"
    assert_error(await client.post("/v1/messages", json={"raw": raw}), 400, "3 recipients")
    assert store.calls == []
    # The limit is per list, as the schema's maxItems says.
    r = await client.post("/v1/messages", json=message(cc=["b@example.com"], bcc=["c@example.com"]))
    assert r.status_code == 202 and len(r.json()["recipients"]) == 3


@pytest.mark.parametrize(
    ("authorization", "expect"),
    [
        (None, "missing API key"),
        ("Basic dXNlcjpwYXNz", "missing API key"),
        ("Bearer", "missing API key"),
        ("Bearer wrong-key", "unknown API key"),
        (f"Bearer {KEY}x", "unknown API key"),
        (b"Bearer \xc3\xa9\xc3\xa9", "unknown API key"),  # non-ASCII bytes
    ],
)
async def test_bad_auth_is_401_everywhere(
    client: httpx.AsyncClient, store: FakeStore, authorization: str | bytes | None, expect: str
) -> None:
    headers: Any = {"Authorization": authorization} if authorization is not None else {}
    client.headers.pop("Authorization")
    calls = [
        ("POST", "/v1/messages"),
        ("GET", "/v1/messages/x"),
        ("GET", "/v1/queue"),
        ("GET", "/v1/queue/counts"),
        ("POST", "/v1/queue/retry"),
        ("POST", "/v1/queue/x/hold"),
        ("POST", "/v1/queue/x/release"),
        ("POST", "/v1/queue/x/retry"),
        ("DELETE", "/v1/queue/x"),
    ]
    for method, url in calls:
        r = await client.request(method, url, json=message(), headers=headers)
        assert_error(r, 401, expect)
        assert r.headers["www-authenticate"].startswith('Bearer realm="mxpress"')
    assert store.calls == []


async def test_two_keys_name_their_origin(make_client: AppFactory, store: FakeStore) -> None:
    other = new_api_key()
    assert other.startswith("mxp_") and len(other) > 40
    client = make_client(api_keys={**KEYS, "shop": api_key_digest(other)})
    r = await client.post(
        "/v1/messages", json=message(), headers={"Authorization": f"Bearer {other}"}
    )
    assert r.status_code == 202
    assert store.enqueued[0].origin == "http:shop"


def test_configuration_errors(store: FakeStore) -> None:
    with pytest.raises(ConfigError, match=r"'app'.*64 hex digits"):
        build_http_app(store, api_keys={"app": "the-key-itself"})
    with pytest.raises(ConfigError, match="max_message_size"):
        build_http_app(store, api_keys=KEYS, max_message_size=0)
    with pytest.raises(ConfigError, match="max_recipients"):
        build_http_app(store, api_keys=KEYS, max_recipients=0)


async def test_no_keys_configured_refuses_everyone(
    make_client: AppFactory, store: FakeStore
) -> None:
    client = make_client(api_keys={})
    assert_error(await client.get("/v1/queue"), 401, "unknown API key")
    assert (await client.get("/healthz")).status_code == 200


# --- accepted submissions -------------------------------------------------------------


async def test_full_message_is_built_as_asked(client: httpx.AsyncClient, store: FakeStore) -> None:
    pdf = bytes(range(256)) * 10
    r = await client.post(
        "/v1/messages",
        json=message(
            to=["alice@example.com", "bob@example.net"],
            cc=["alice@example.com"],  # duplicate of a To: one envelope recipient
            subject="Grüße ✓",
            html="<p>Hi</p>",
            headers={"Reply-To": "help@example.org", "X-Campaign": "spring sale"},
            attachments=[
                {"filename": "invoice.pdf", "content_type": "application/pdf",
                 "content_base64": base64.encodebytes(pdf).decode()},  # wrapped lines are fine
                {"filename": "notes.txt", "content_base64": "aGk="},
            ],
        ),
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.json()["recipients"] == ["alice@example.com", "bob@example.net"]
    sent = parse(store.enqueued[0].data)
    assert sent["Subject"] == "Grüße ✓" and sent["Reply-To"] == "help@example.org"
    assert sent["X-Campaign"] == "spring sale" and sent["Cc"] == "alice@example.com"
    assert sent.get_body(("plain",)).get_content().strip() == "Hi Alice"  # type: ignore[union-attr]
    assert sent.get_body(("html",)).get_content().strip() == "<p>Hi</p>"  # type: ignore[union-attr]
    files = {p.get_filename(): p for p in sent.iter_attachments()}
    assert files["invoice.pdf"].get_content() == pdf
    assert files["invoice.pdf"].get_content_type() == "application/pdf"
    assert files["notes.txt"].get_content_type() == "application/octet-stream"
    assert store.enqueued[0].data.isascii()  # Subject is RFC 2047, parts are encoded


async def test_big_message_is_built_off_the_event_loop(
    client: httpx.AsyncClient, store: FakeStore
) -> None:
    blob = bytes(range(256)) * 800  # 200 KiB: over the threshold for a worker thread
    data = base64.b64encode(blob).decode()
    r = await client.post(
        "/v1/messages", json=attach(content_type="image/png", content_base64=data)
    )
    assert r.status_code == 202, r.text
    [part] = parse(store.enqueued[0].data).iter_attachments()
    assert part.get_content() == blob


async def test_bcc_only_and_utf8_addresses(client: httpx.AsyncClient, store: FakeStore) -> None:
    r = await client.post(
        "/v1/messages", json=message(to=..., bcc=["jürgen@bücher.example"], subject="x")
    )
    assert r.status_code == 202, r.text
    assert list(store.enqueued[0].recipients) == ["jürgen@bücher.example"]
    assert b"j\xc3\xbcrgen" not in store.enqueued[0].data  # Bcc is envelope only


async def test_raw_message_envelope_from_headers(
    client: httpx.AsyncClient, store: FakeStore
) -> None:
    raw = (
        "From: App <app@example.org>\nTo: Alice <alice@example.com>, bob@example.net\n"
        "Bcc: audit@example.org\nMessage-ID: <abc@example.org>\nSubject: hi\n\nbody\n"
    )
    r = await client.post("/v1/messages", json={"raw": raw})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["message_id"] == "<abc@example.org>"
    assert body["recipients"] == ["alice@example.com", "bob@example.net", "audit@example.org"]
    stored = store.enqueued[0]
    assert stored.sender == "app@example.org"
    assert b"Bcc" not in stored.data and stored.data.endswith(b"\r\n\r\nbody\r\n")
    assert stored.data.count(b"\n") == stored.data.count(b"\r\n")


async def test_raw_message_with_explicit_envelope(
    client: httpx.AsyncClient, store: FakeStore
) -> None:
    r = await client.post(
        "/v1/messages",
        json={"raw": RAW, "from": "bounces@example.org", "to": ["other@example.com"]},
    )
    assert r.status_code == 202, r.text
    stored = store.enqueued[0]
    assert (stored.sender, list(stored.recipients)) == (
        "bounces@example.org",
        ["other@example.com"],
    )
    assert r.json()["message_id"] is None  # the raw message has none; it is sent as given


# --- reading and managing the queue ---------------------------------------------------


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "held"}, ("unknown query parameter 'status'",)),
        ({"state": "frozen"}, ("'state'", "active, held, done", "'frozen'")),
        ({"recipient_state": "lost"}, ("'recipient_state'", "deferred")),
        ({"limit": "0"}, ("'limit'", "1 to 1000")),
        ({"limit": "1001"}, ("'limit'",)),
        ({"limit": "ten"}, ("'limit'", "'ten'")),
        ({"limit": "-1"}, ("'limit'",)),
        ({"limit": "9" * 5000}, ("'limit'",)),
        ([("state", "held"), ("state", "done")], ("'state' is given more than once",)),
    ],
)
async def test_bad_queue_filters(
    client: httpx.AsyncClient, store: FakeStore, params: Any, names: tuple[str, ...]
) -> None:
    assert_error(await client.get("/v1/queue", params=params), 400, *names)
    assert store.calls == []


async def test_unknown_messages_are_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/messages/nope"), 404, "'nope'")
    assert_error(await client.get("/v1/messages/" + "a" * 129), 404, "too long")
    assert_error(await client.post("/v1/queue/nope/hold"), 404, "'nope'")
    assert_error(await client.post("/v1/queue/nope/release"), 404, "'nope'")
    assert_error(await client.post("/v1/queue/nope/retry"), 404, "'nope'")
    assert_error(await client.delete("/v1/queue/nope"), 404, "'nope'")


async def test_hold_is_idempotent(client: httpx.AsyncClient) -> None:
    message_id = (await client.post("/v1/messages", json=message())).json()["id"]
    for _ in range(2):
        r = await client.post(f"/v1/queue/{message_id}/hold")
        assert r.status_code == 200 and r.json()["state"] == "held"


async def test_unknown_paths_and_methods_are_json_errors(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v2/messages"), 404, "GET /v2/messages")
    r = await client.get("/v1/messages")
    assert_error(r, 405, "GET /v1/messages", "POST")
    assert r.headers["allow"] == "POST"
    assert_error(await client.put("/v1/queue/counts"), 405, "GET")


# --- health and metrics -----------------------------------------------------------------


async def test_health_reports(make_client: AppFactory) -> None:
    async def good() -> dict[str, object]:
        return {"status": "ok", "queue": {"active": 3}}

    async def degraded() -> dict[str, object]:
        return {"status": "degraded", "reason": "disk 97% full"}

    async def broken() -> dict[str, object]:
        raise OSError("queue file unreadable")

    r = await make_client(health=good).get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json() == {"status": "ok", "queue": {"active": 3}}
    r = await make_client(health=degraded).get("/healthz")
    assert r.status_code == 503 and r.json()["reason"] == "disk 97% full"
    r = await make_client(health=broken).get("/healthz")
    assert r.status_code == 503 and r.json() == {
        "status": "error",
        "error": "queue file unreadable",
    }


async def test_metrics_serve_the_given_registry(make_client: AppFactory) -> None:
    registry = CollectorRegistry()
    Gauge("mxpress_queue_depth", "Recipients waiting", registry=registry).set(7)
    client = make_client(metrics_registry=registry)
    await client.post("/v1/messages", json=message())
    await client.post("/v1/messages", json=message(to=["bad"]))
    text = (await client.get("/metrics", headers={"Authorization": ""})).text
    assert "mxpress_queue_depth 7.0" in text
    assert "mxpress_http_messages_accepted_total 1.0" in text
    assert 'route="/v1/messages",status="400"' in text
    assert 'mxpress_http_request_seconds_count{route="/v1/messages"} 2.0' in text
