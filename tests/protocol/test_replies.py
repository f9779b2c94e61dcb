from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxpress.errors import RemoteProtocolError
from mxpress.protocol.replies import Reply, ReplyParser, make_reply


def parse_all(data: bytes, **kwargs: int) -> list[Reply]:
    parser = ReplyParser(**kwargs)
    replies = parser.feed(data)
    assert not parser.pending
    return replies


def parse_bytewise(data: bytes, **kwargs: int) -> list[Reply]:
    parser = ReplyParser(**kwargs)
    replies: list[Reply] = []
    for i in range(len(data)):
        replies += parser.feed(data[i : i + 1])
    assert not parser.pending
    return replies


def format_reply(reply: Reply) -> bytes:
    """What a server sends: every line carries the code and (if any) the enhanced code."""
    prefix = f"{reply.enhanced} " if reply.enhanced else ""
    out = []
    for i, line in enumerate(reply.lines):
        sep = " " if i == len(reply.lines) - 1 else "-"
        out.append(f"{reply.code}{sep}{prefix}{line}\r\n")
    return "".join(out).encode("utf-8")


def test_single_line() -> None:
    assert parse_all(b"220 mx.example.com ESMTP Postfix\r\n") == [
        Reply(220, ("mx.example.com ESMTP Postfix",))
    ]


def test_multi_line() -> None:
    replies = parse_all(b"250-mx.example.com\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    assert replies == [Reply(250, ("mx.example.com", "PIPELINING", "CHUNKING"))]
    assert replies[0].text == "mx.example.com\nPIPELINING\nCHUNKING"
    assert replies[0].ok


def test_code_only_line() -> None:
    assert parse_all(b"250\r\n") == [Reply(250, ("",))]


def test_several_replies_in_one_feed() -> None:
    data = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    replies = parse_all(data)
    assert [r.code for r in replies] == [250, 250, 354]
    assert replies[2].intermediate


def test_enhanced_code_matching_class() -> None:
    (reply,) = parse_all(b"250 2.1.0 Ok\r\n")
    assert reply.enhanced == "2.1.0"
    assert reply.text == "Ok"
    assert str(reply) == "250 2.1.0 Ok"


def test_enhanced_code_other_class_is_text() -> None:
    (reply,) = parse_all(b"250 5.1.0 x\r\n")
    assert reply.enhanced is None
    assert reply.text == "5.1.0 x"


def test_enhanced_code_stripped_from_continuation_lines() -> None:
    (reply,) = parse_all(
        b"550-5.7.1 Message rejected\r\n550-5.7.1 see https://example.com\r\n550 5.7.1 bye\r\n"
    )
    assert reply.enhanced == "5.7.1"
    assert reply.lines == ("Message rejected", "see https://example.com", "bye")
    assert reply.permanent


def test_enhanced_code_alone_and_leading_zeros() -> None:
    assert parse_all(b"451 4.3.0\r\n")[0] == Reply(451, ("",), "4.3.0")
    assert parse_all(b"250 2.01.000 ok\r\n")[0].enhanced == "2.1.0"
    # Not followed by a space: not an enhanced code.
    assert parse_all(b"250 2.1.0x\r\n")[0].enhanced is None
    # Digits of other scripts are not status code digits.
    assert parse_all("250 2.\u0661.0 x\r\n".encode())[0].enhanced is None


def test_bare_lf() -> None:
    assert parse_all(b"250-a\n250 b\n") == [Reply(250, ("a", "b"))]


def test_transient_and_permanent() -> None:
    assert parse_all(b"421 4.7.0 closing\r\n")[0].transient
    assert parse_all(b"554 no\r\n")[0].permanent


def test_code_change_mid_reply() -> None:
    with pytest.raises(RemoteProtocolError, match="changed code"):
        parse_all(b"250-a\r\n251 b\r\n")


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello\r\n",
        b"25\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"abc def\r\n",
        b"\r\n",
        b"099 x\r\n",
        b"600 x\r\n",
        b"+OK POP3\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",
    ],
)
def test_garbage(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_all(garbage)


def test_invalid_utf8_does_not_fail() -> None:
    (reply,) = parse_all(b"250 caf\xe9\r\n")
    assert reply.text == "caf\ufffd"


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
@pytest.mark.parametrize("parse", [parse_all, parse_bytewise])
def test_line_cap_boundary(ending: bytes, parse: object) -> None:
    assert callable(parse)
    limit = 32
    fits = b"250 " + b"x" * (limit - 4)  # exactly `limit` octets without the line end
    assert parse(fits + ending, max_line=limit) == [Reply(250, ("x" * (limit - 4),))]
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse(fits + b"x" + ending, max_line=limit)


def test_line_cap_without_line_end() -> None:
    parser = ReplyParser(max_line=32)
    parser.feed(b"250 " + b"x" * 28)
    with pytest.raises(RemoteProtocolError, match="without a line end"):
        parser.feed(b"xx")


def test_line_cap_stops_endless_stream() -> None:
    parser = ReplyParser(max_line=1000)
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            parser.feed(b"x" * 100)


@pytest.mark.parametrize("parse", [parse_all, parse_bytewise])
def test_line_count_cap(parse: object) -> None:
    assert callable(parse)
    reply = format_reply(Reply(250, tuple(str(i) for i in range(8))))
    assert parse(reply, max_lines=8)[0].lines[-1] == "7"
    reply = format_reply(Reply(250, tuple(str(i) for i in range(9))))
    with pytest.raises(RemoteProtocolError, match="exceeds 8 lines"):
        parse(reply, max_lines=8)


def test_pending() -> None:
    parser = ReplyParser()
    assert not parser.pending
    assert parser.feed(b"250-a\r\n250 b") == []
    assert parser.pending
    assert parser.feed(b"\r\n") == [Reply(250, ("a", "b"))]
    assert not parser.pending


POSTFIX_SESSION = (
    b"220 mx.example.com ESMTP Postfix (Debian/GNU)\r\n"
    b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    b"250 CHUNKING\r\n"
    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <nobody@example.com>: Recipient address "
    b"rejected: User unknown in local recipient table\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    b"250 2.0.0 Ok: queued as 4Xyz1\r\n221 2.0.0 Bye\r\n"
)


def test_one_byte_at_a_time_equals_whole_buffer() -> None:
    whole = parse_all(POSTFIX_SESSION)
    assert len(whole) == 8
    assert parse_bytewise(POSTFIX_SESSION) == whole
    assert parse_bytewise(POSTFIX_SESSION.replace(b"\r\n", b"\n")) == whole


# --- property tests -------------------------------------------------------------------

_LOOKS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)", re.ASCII)

_text_line = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=40,
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(200, 599))
    enhanced = None
    if str(code)[0] in "245" and draw(st.booleans()):
        enhanced = f"{str(code)[0]}.{draw(st.integers(0, 999))}.{draw(st.integers(0, 999))}"
    lines = draw(st.lists(_text_line, min_size=1, max_size=5))
    if enhanced is None:
        # Otherwise the parser rightly lifts a code-looking prefix off the first line.
        lines = [line for line in lines if not _LOOKS_ENHANCED.match(line)] or [""]
    return Reply(code, tuple(lines), enhanced)


@given(replies())
def test_format_parse_round_trip(reply: Reply) -> None:
    assert parse_all(format_reply(reply)) == [reply]
    if reply.enhanced is None:
        assert make_reply(reply.code, list(reply.lines)) == reply


@given(st.lists(replies(), min_size=1, max_size=6), st.data())
def test_random_splits_give_same_replies(expected: list[Reply], data: st.DataObject) -> None:
    stream = b"".join(format_reply(r) for r in expected)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    parser = ReplyParser()
    got: list[Reply] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        got += parser.feed(stream[previous:cut])
        previous = cut
    assert got == expected
    assert parse_all(stream) == expected
    assert not parser.pending


def test_repeated_replies_and_cached_final_line() -> None:
    parser = ReplyParser()
    ok = parser.feed(b"250 2.1.5 Ok\r\n")
    assert parser.feed(b"250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n") == ok * 2
    # The same bytes as the last line of a multi-line reply are not a reply of their own.
    assert parser.feed(b"250-first\r\n250 2.1.5 Ok\r\n") == [Reply(250, ("first", "2.1.5 Ok"))]
    assert parser.feed(b"250 2.1.5 Ok\n") == ok
