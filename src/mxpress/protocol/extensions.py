"""EHLO reply → `Capabilities` (RFC 5321 §4.1.1.1 and the extension RFCs).

Parsed once per connection. Tolerant: keywords are case-insensitive, junk lines are
skipped, a bad SIZE value counts as "no limit" — a server's odd EHLO text must never
stop delivery, only turn off the extension it garbles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mxpress.protocol.replies import Reply

# ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")   (RFC 5321 §4.1.1.1)
_KEYWORD_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_EMPTY_KEYWORDS: Mapping[str, str] = MappingProxyType({})
# More digits than this is no real limit (and int() refuses > 4300 digits anyway).
_MAX_SIZE_DIGITS = 20


def _no_keywords() -> Mapping[str, str]:
    return _EMPTY_KEYWORDS


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server said it supports in its EHLO reply."""

    pipelining: bool = False
    chunking: bool = False
    binarymime: bool = False
    size: int | None = None  # None: SIZE not advertised; 0: advertised without a limit
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()  # upper-case SASL mechanism names
    dsn: bool = False
    enhancedstatuscodes: bool = False
    esmtp: bool = True  # False after a HELO fallback
    # Every EHLO keyword (upper-case) -> its parameter string. Read-only; left out of the
    # hash (a mapping is not hashable) — equal objects still hash equal.
    keywords: Mapping[str, str] = field(default_factory=_no_keywords, hash=False)

    def supports(self, keyword: str) -> bool:
        """True if the server advertised `keyword` (case-insensitive)."""
        return keyword.upper() in self.keywords


HELO_CAPABILITIES = Capabilities(esmtp=False)


def parse_ehlo(reply: Reply) -> Capabilities:
    """Read the capabilities from a successful (250) EHLO reply.

    The first line is the server's greeting domain and is ignored. Callers handle a
    failed EHLO themselves (fall back to HELO and use `HELO_CAPABILITIES`).
    """
    keywords: dict[str, str] = {}
    auth: set[str] = set()
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.upper()
        params = params.strip()
        if keyword.startswith("AUTH="):
            # Pre-RFC 4954 form some servers still send for old clients: "AUTH=PLAIN LOGIN".
            old = f"{keyword[5:]} {params}".strip()
            auth.update(old.upper().split())
            keywords.setdefault("AUTH", old)
            continue
        if not keyword or keyword[0] == "-" or keyword.strip(_KEYWORD_CHARS):
            continue  # junk line: not an ehlo-keyword
        keywords[keyword] = params
        if keyword == "AUTH":
            auth.update(params.upper().split())

    size: int | None = None
    if "SIZE" in keywords:
        value = keywords["SIZE"].partition(" ")[0]
        # "SIZE" alone, "SIZE 0" and garbage all mean: no announced limit.
        if value.isascii() and value.isdigit() and len(value) <= _MAX_SIZE_DIGITS:
            size = int(value)
        else:
            size = 0

    return Capabilities(
        pipelining="PIPELINING" in keywords,
        chunking="CHUNKING" in keywords,
        binarymime="BINARYMIME" in keywords,
        size=size,
        eightbitmime="8BITMIME" in keywords,
        smtputf8="SMTPUTF8" in keywords,
        starttls="STARTTLS" in keywords,
        auth=frozenset(auth),
        dsn="DSN" in keywords,
        enhancedstatuscodes="ENHANCEDSTATUSCODES" in keywords,
        esmtp=True,
        keywords=MappingProxyType(keywords),
    )
