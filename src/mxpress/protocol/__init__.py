"""Sans-IO SMTP: no asyncio, no sockets, no clock. Bytes in, events out (DESIGN.md §2).

The `data()` command builder is not re-exported here because its name is taken by the
`mxpress.protocol.data` submodule: use `commands.data()` or `commands.DATA`.

Some of these modules may be compiled by mypyc (setup.py, docs/ARCHITECTURE.md); the
package's `__init__` refuses a stale build before any of them is imported.
"""

from mxpress.protocol import commands
from mxpress.protocol.commands import (
    auth,
    auth_continue,
    bdat,
    ehlo,
    helo,
    mail_from,
    noop,
    quit,
    rcpt_to,
    rset,
    starttls,
    validate_address,
    xtext,
    xtext_decode,
)
from mxpress.protocol.data import (
    check_line_lengths,
    chunks,
    dot_stuff,
    encode_data,
    needs_8bit,
    normalize_crlf,
)
from mxpress.protocol.extensions import HELO_CAPABILITIES, Capabilities, parse_ehlo
from mxpress.protocol.replies import Reply, ReplyParser, make_reply
from mxpress.protocol.sasl import CramMD5, Login, Mechanism, Plain, XOAuth2, choose_mechanism

__all__ = [
    "HELO_CAPABILITIES",
    "Capabilities",
    "CramMD5",
    "Login",
    "Mechanism",
    "Plain",
    "Reply",
    "ReplyParser",
    "XOAuth2",
    "auth",
    "auth_continue",
    "bdat",
    "check_line_lengths",
    "choose_mechanism",
    "chunks",
    "commands",
    "dot_stuff",
    "ehlo",
    "encode_data",
    "helo",
    "mail_from",
    "make_reply",
    "needs_8bit",
    "noop",
    "normalize_crlf",
    "parse_ehlo",
    "quit",
    "rcpt_to",
    "rset",
    "starttls",
    "validate_address",
    "xtext",
    "xtext_decode",
]
