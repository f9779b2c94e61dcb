"""On-demand profiles of a busy relay: through the API (behind the key) and through the
local --profile-port listener; one capture at a time; nothing running when unused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from mxpress.errors import ConfigError, ProfilerBusy
from mxpress.observe.profiler import Profiler
from mxpress.relay import Relay
from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, aiosmtpd_server, free_port
from tests.observe.relay_lab import (
    API_KEY,
    http_base,
    http_burst,
    smtp_burst,
    start_relay,
    write_config,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def sink() -> Iterator[tuple[AiosmtpdServer, RecordingHandler]]:
    handler = RecordingHandler()
    with start_lab_server(lambda: aiosmtpd_server(handler)) as server:
        yield server, handler


@pytest.fixture
async def busy_relay(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> AsyncIterator[Relay]:
    server, _ = sink
    config = write_config(
        tmp_path,
        f"smtp+plain://{server.host}:{server.port}",
        observe={"profile_port": free_port()},
    )
    relay = await start_relay(config)
    yield relay
    await relay.stop(grace=5)


async def keep_busy(relay: Relay, stop: asyncio.Event) -> None:
    """Traffic through every part: SMTP and HTTP submission, scheduler, delivery."""
    assert relay.submission is not None
    n = 0
    while not stop.is_set():
        rcpts = [f"u{n + i}@busy.test" for i in range(10)]
        await asyncio.gather(
            asyncio.to_thread(smtp_burst, relay.submission.port, rcpts),
            http_burst(relay, rcpts[:3]),
        )
        n += 10


def mxpress_frames(speedscope: bytes) -> set[str]:
    doc = json.loads(speedscope)
    assert doc["$schema"].startswith("https://www.speedscope.app/")
    return {f["name"] for f in doc["shared"]["frames"] if "/mxpress/" in (f.get("file") or "")}


async def test_profile_of_a_busy_relay_over_the_api(busy_relay: Relay) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(keep_busy(busy_relay, stop))
    try:
        async with httpx.AsyncClient(base_url=http_base(busy_relay), timeout=30) as client:
            url = "/v1/admin/profile"
            capture = asyncio.create_task(
                client.get(url, params={"seconds": 1, "format": "speedscope"}, headers=AUTH)
            )
            await asyncio.sleep(0.3)
            second = await client.get(url, params={"seconds": 0.1}, headers=AUTH)
            assert second.status_code == 409, second.text  # one capture at a time
            assert second.json()["error"]["code"] == "conflict"
            response = await capture
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            frames = mxpress_frames(response.content)
            # The relay's own work, sampled from other tasks than the capturing one.
            assert frames & {"_deliver", "deliver_many", "enqueue", "submit", "accept"}, frames

            assert (await client.get(url, params={"seconds": 0.1})).status_code == 401
            for bad in ({"seconds": 1000}, {"seconds": "soon"}, {"seconds": ""}, {"format": "pdf"}):
                refused = await client.get(url, params=bad, headers=AUTH)
                assert refused.status_code == 400, bad
    finally:
        stop.set()
        await load


async def test_profile_port_serves_html_and_collapsed(busy_relay: Relay) -> None:
    assert busy_relay.profile_http is not None
    assert busy_relay.profile_http.host == "127.0.0.1"
    stop = asyncio.Event()
    load = asyncio.create_task(keep_busy(busy_relay, stop))
    base = f"http://127.0.0.1:{busy_relay.profile_http.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert "GET /profile" in (await client.get("/")).text
            html = await client.get("/profile", params={"seconds": 1})  # no key: local only
            assert html.status_code == 200
            assert html.headers["content-type"].startswith("text/html")
            assert b"pyinstrument" in html.content and b"mxpress" in html.content
            collapsed = await client.get("/profile", params={"seconds": 0.5, "format": "collapsed"})
            assert collapsed.status_code == 200
            assert "attachment" in collapsed.headers["content-disposition"]
            lines = collapsed.text.splitlines()
            assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
            assert any("mxpress/" in line for line in lines)
    finally:
        stop.set()
        await load
    assert "profiler on 127.0.0.1:" in busy_relay.describe()


async def test_one_capture_at_a_time_and_bad_arguments() -> None:
    profiler = Profiler(max_seconds=2)
    first = asyncio.create_task(profiler.capture(0.3, "collapsed"))
    await asyncio.sleep(0.05)
    assert profiler.busy
    with pytest.raises(ProfilerBusy):
        await profiler.capture(0.1)
    await first
    assert not profiler.busy
    assert sys.getprofile() is None  # the sampler is gone once the capture is over
    for seconds, fmt in ((0, "html"), (3, "html"), (float("nan"), "html"), (1, "svg")):
        with pytest.raises(ConfigError):
            await profiler.capture(seconds, fmt)


async def test_cancelled_capture_stops_the_sampler() -> None:
    profiler = Profiler()
    task = asyncio.create_task(profiler.capture(30))
    await asyncio.sleep(0.1)
    assert sys.getprofile() is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sys.getprofile() is None and not profiler.busy


def test_pyinstrument_is_not_even_imported_until_asked() -> None:
    code = (
        "import sys, asyncio\n"
        "from mxpress.config import Settings\n"
        "from mxpress.relay import build_relay\n"
        "relay = build_relay(Settings())\n"
        "assert relay.http_app is not None\n"
        "print('pyinstrument' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_serve_profile_port_flag(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    """`mxpress serve --profile-port` as a real process: the listener answers, SIGTERM
    still stops the relay gracefully."""
    import signal
    import time

    server, _ = sink
    config = write_config(tmp_path, f"smtp+plain://{server.host}:{server.port}")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxpress.cli", "serve", "--config", str(config),
         "--log-level", "warning", "--profile-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                index = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the profile listener did not start"
                time.sleep(0.05)
        assert index.status_code == 200 and "/profile" in index.text
        profile = httpx.get(
            f"http://127.0.0.1:{port}/profile",
            params={"seconds": 0.3, "format": "collapsed"},
            timeout=10,
        )
        assert profile.status_code == 200
        # The relay's loop thread is sampled (under uvloop the loop itself is C: no frames).
        assert "serve_command (cli/serve.py" in profile.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        if proc.stdout is not None:
            proc.stdout.close()


async def test_without_pyinstrument_the_capture_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from mxpress.errors import ProfilerError

    monkeypatch.setitem(sys.modules, "pyinstrument", None)  # import fails as if absent
    profiler = Profiler()
    with pytest.raises(ProfilerError, match="pip install pyinstrument"):
        await profiler.capture(0.1)
    assert not profiler.busy
