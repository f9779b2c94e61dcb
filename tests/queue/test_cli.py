"""`mxpress queue ...` through click, against a real queue file (as the server leaves it)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mxpress.cli.queue import queue_group
from mxpress.queue import AttemptOutcome, NewMessage, RecipientState, SQLiteQueue
from tests.queue.conftest import T0, FakeClock

LATER = T0 + 10**9


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(queue_group, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def queue_dir(tmp_path: Path) -> tuple[str, list[str]]:
    """A data dir with three messages: one partly deferred, one held, one done."""

    async def fill() -> list[str]:
        clock = FakeClock()
        async with SQLiteQueue(tmp_path / "queue.sqlite3", clock=clock) as store:
            deferred = await store.enqueue(
                NewMessage("app@example.org", ["a@x.test", "b@y.test"], b"Subject: one\r\n\r\n1")
            )
            held = await store.enqueue(NewMessage("", ["c@z.test"], b"dsn", is_bounce=True))
            done = await store.enqueue(NewMessage("app@example.org", ["d@x.test"], b"x" * 3000))
            await store.hold(held)
            for lease in await store.lease_due(clock.now, 10, 60):
                if lease.message.id == deferred:
                    outcomes = [
                        AttemptOutcome("a@x.test", RecipientState.DELIVERED, "250 2.0.0 ok"),
                        AttemptOutcome(
                            "b@y.test",
                            RecipientState.DEFERRED,
                            "451 4.7.1 greylisted",
                            host="mx.y.test",
                            next_attempt=LATER,  # after the CLI's real clock
                        ),
                    ]
                else:
                    outcomes = [AttemptOutcome("d@x.test", RecipientState.DELIVERED, "250 ok")]
                await store.record(lease, outcomes)
        return [deferred, held, done]

    return str(tmp_path), asyncio.run(fill())


def test_ls_like_mailq(queue_dir: tuple[str, list[str]]) -> None:
    data_dir, (deferred, held, done) = queue_dir
    code, out, _ = run("ls", "--data-dir", data_dir)
    assert code == 0
    assert out.startswith("-Queue ID-")
    assert f"{deferred}  " in out and f"{held}! " in out and done not in out
    assert "app@example.org" in out and "<>" in out  # the bounce's null sender
    assert "deferred   b@y.test  [1 attempt, next " in out
    assert "mx.y.test]  (451 4.7.1 greylisted)" in out
    assert "delivered  a@x.test  [1 attempt]  (250 2.0.0 ok)" in out
    assert out.rstrip().endswith("-- 1 Kbytes in 2 Requests.")

    _, out, _ = run("ls", "--data-dir", data_dir, "--state", "all")
    assert f"{done}- " in out
    _, out, _ = run("ls", "--data-dir", data_dir, "--state", "held")
    assert held in out and deferred not in out


def test_ls_json_filters_and_pages(queue_dir: tuple[str, list[str]]) -> None:
    data_dir, (deferred, held, done) = queue_dir
    code, out, _ = run("ls", "--data-dir", data_dir, "--json", "--state", "all")
    assert code == 0
    assert [m["id"] for m in json.loads(out)] == [deferred, held, done]
    _, out, _ = run("ls", "--data-dir", data_dir, "--json", "--recipient-state", "deferred")
    [only] = json.loads(out)
    assert only["id"] == deferred
    assert only["recipients"][1]["last_reply"] == "451 4.7.1 greylisted"
    _, out, _ = run("ls", "--data-dir", data_dir, "--json", "--state", "all", "--domain", "x.test")
    assert [m["id"] for m in json.loads(out)] == [deferred, done]
    _, out, _ = run("ls", "--data-dir", data_dir, "--limit", "1")
    assert f"-- more: mxpress queue ls --after {deferred}" in out
    _, out, _ = run("ls", "--data-dir", data_dir, "--after", held)
    assert out.strip() == "No more messages"


def test_show(queue_dir: tuple[str, list[str]]) -> None:
    data_dir, (deferred, _, done) = queue_dir
    result = CliRunner().invoke(queue_group, ["show", deferred, "--data-dir", data_dir, "--data"])
    assert result.exit_code == 0
    assert f"id:       {deferred}" in result.stdout and "state:    active" in result.stdout
    assert result.stdout_bytes.endswith(b"\nSubject: one\r\n\r\n1")  # the bytes, unchanged
    _, out, _ = run("show", deferred, "--data-dir", data_dir, "--json", "--data")
    shown = json.loads(out)
    assert base64.b64decode(shown["data_base64"]) == b"Subject: one\r\n\r\n1"
    assert shown["recipients"][1]["next_attempt"] == LATER
    _, out, _ = run("show", done, "--data-dir", data_dir, "--data")
    assert "body is discarded" in out
    code, _, err = run("show", "ffffffffffffffffffff", "--data-dir", data_dir)
    assert code == 1 and err == "mxpress queue: no message ffffffffffffffffffff in the queue\n"


def test_hold_release_delete_flush(queue_dir: tuple[str, list[str]]) -> None:
    data_dir, (deferred, held, done) = queue_dir
    assert run("release", held, "--data-dir", data_dir)[:2] == (0, f"{held}: released\n")
    code, _, err = run("release", held, "--data-dir", data_dir)
    assert code == 1 and "cannot be released (it is active)" in err
    assert run("hold", deferred, held, "--data-dir", data_dir)[0] == 0
    code, _, err = run("hold", done, "--data-dir", data_dir)
    assert code == 1 and "cannot be held (it is done)" in err
    assert run("flush", "--data-dir", data_dir)[1] == "1 deferred recipient made due now\n"
    assert run("delete", held, "--data-dir", data_dir)[1] == f"{held}: deleted\n"
    code, out, err = run("delete", held, deferred, "--data-dir", data_dir)
    assert code == 1 and out == f"{deferred}: deleted\n" and "no such message" in err
    assert (
        json.loads(run("ls", "--data-dir", data_dir, "--json", "--state", "all")[1])[0]["id"]
        == done
    )


def test_missing_queue_file_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = run("ls", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 1
    assert err.startswith("mxpress queue: no queue database at ") and "--data-dir" in err
    assert not (tmp_path / "nowhere").exists()  # the CLI never invents an empty queue


def test_works_while_a_server_holds_the_file_open(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SQLiteQueue(tmp_path / "queue.sqlite3") as server:
            message_id = await server.enqueue(NewMessage("a@x.test", ["b@y.test"], b"x"))
            # The CLI is another connection and its own writer (here: another thread).
            code, _, _ = await asyncio.to_thread(
                run, "hold", message_id, "--data-dir", str(tmp_path)
            )
            assert code == 0
            assert await server.lease_due(T0 * 2, 10, 60) == []
            code, out, _ = await asyncio.to_thread(run, "ls", "--data-dir", str(tmp_path))
            assert f"{message_id}!" in out

    asyncio.run(scenario())


def test_every_workers_queue_file(tmp_path: Path) -> None:
    async def fill() -> list[str]:
        clock = FakeClock()
        ids = []
        async with (
            SQLiteQueue(tmp_path / "queue.sqlite3", clock=clock) as worker0,
            SQLiteQueue(tmp_path / "queue.1.sqlite3", clock=clock) as worker1,
        ):
            for store in (worker1, worker0, worker1):
                clock.advance(1)
                ids.append(await store.enqueue(NewMessage("a@x.test", ["b@y.test"], b"x")))
        return ids

    first, second, third = asyncio.run(fill())  # in queue.1, queue, queue.1
    code, out, _ = run("ls", "--data-dir", str(tmp_path), "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)] == [first, second, third]
    _, out, _ = run("ls", "--data-dir", str(tmp_path), "--json", "--limit", "1", "--after", first)
    assert [m["id"] for m in json.loads(out)] == [second]
    code, out, _ = run("show", third, "--data-dir", str(tmp_path), "--json", "--data")
    assert code == 0 and json.loads(out)["id"] == third
    assert base64.b64decode(json.loads(out)["data_base64"]) == b"x"
    assert run("hold", first, second, "--data-dir", str(tmp_path))[:2] == (
        0,
        f"{first}: held\n{second}: held\n",
    )
    _, out, _ = run("ls", "--data-dir", str(tmp_path), "--state", "held", "--json")
    assert [m["id"] for m in json.loads(out)] == [first, second]
