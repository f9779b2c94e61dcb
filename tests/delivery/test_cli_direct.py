"""`mxpress send` without --server (direct MX delivery) and `--bulk`, on the mail lab."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mxpress.cli import cli
from tests.delivery.conftest import MailLab


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_direct_send_via_mx(mail_lab: MailLab) -> None:
    code, out, err = run(
        "send",
        "--nameserver",
        mail_lab.dns.address,
        "--port",
        str(mail_lab.port),
        "--from",
        "app@sender.test",
        "--to",
        "ann@mail.test",
        "--to",
        "x@nullmx.test",
        "--subject",
        "direct",
        "--body",
        "hi",
    )
    assert code == 2, err  # one delivered, one bounced
    assert "delivered" in out and f"127.0.0.2:{mail_lab.port}" in out
    assert "bounced" in out and "null MX" in out
    assert mail_lab.mx1_handler.wait_for_messages(1)[0].rcpt_tos == ["ann@mail.test"]


def test_bulk_jsonl_through_relay(mail_lab: MailLab, tmp_path: Path) -> None:
    bulk = tmp_path / "mail.jsonl"
    bulk.write_text(
        "\n".join(
            json.dumps(
                {
                    "from": "app@sender.test",
                    "to": [f"u{i}@mail.test"],
                    "subject": f"n{i}",
                    "text": "hello",
                }
            )
            for i in range(120)
        )
    )
    code, out, err = run(
        "send",
        "--server",
        f"{mail_lab.mx1.host}:{mail_lab.port}",
        "--no-tls",
        "--bulk",
        str(bulk),
    )
    assert code == 0, err
    assert "120" in out and "msgs/s" in out
    assert len(mail_lab.mx1_handler.wait_for_messages(120)) == 120


def test_bulk_csv_direct_with_refusals(mail_lab: MailLab, tmp_path: Path) -> None:
    bulk = tmp_path / "mail.csv"
    bulk.write_text(
        "from,to,subject,body\n"
        "app@sender.test,ann@mail.test,one,hi\n"
        "app@sender.test,bad@mail.test,two,hi\n"
        "app@sender.test,c@mail.test;d@mail.test,three,hi\n"
    )
    code, out, _ = run(
        "send",
        "--nameserver",
        mail_lab.dns.address,
        "--port",
        str(mail_lab.port),
        "--bulk",
        str(bulk),
    )
    assert code == 2  # bad@mail.test was refused
    # messages, sent, refused, deferred: 3 messages, 3 recipients got it, 1 refused, 0 deferred
    row = next(line for line in out.splitlines() if line.strip().startswith("│ 3"))
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    assert cells[:4] == ["3", "3", "1", "0"]
    assert "550" in out


def test_bulk_file_errors_name_the_line(tmp_path: Path) -> None:
    bulk = tmp_path / "bad.jsonl"
    bulk.write_text('{"from": "a@x.test", "to": ["b@y.test"]}\nnot json\n')
    code, _, err = run("send", "--server", "127.0.0.1:1", "--bulk", str(bulk))
    assert code == 1 and "line 2" in err and "not JSON" in err
    bulk.write_text('{"from": "a@x.test", "to": ["b@y.test"], "subject": "a\\r\\nBcc: x@y"}\n')
    code, _, err = run("send", "--server", "127.0.0.1:1", "--bulk", str(bulk))
    assert code == 1 and "line 1" in err and "header" in err.lower()
