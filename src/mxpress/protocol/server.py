"""SMTP server state machine, sans-IO: bytes in, events and replies out (RFC 5321).

    machine = ServerMachine(config)           # the 220 greeting is queued
    machine.receive(data)
    while (event := machine.next_event()) is not None:
        ...                                   # answer it: accept() / refuse() / ...
    transport.write(machine.take_output())    # one write for all the replies of a read

Every complete command in the buffer is handled in one call (PIPELINING, RFC 2920), so a
pipelined group gets its replies in one write. An event that needs a decision
(server_events.py) stops the machine until the driver answers it: the replies stay in
order and nothing after a DATA or STARTTLS is read before its reply is decided.

The machine checks syntax, order and the limits (checks from server_checks.py); who may
relay, passwords and storing the message are the driver's. Extensions: PIPELINING, SIZE
(1870), 8BITMIME (6152), SMTPUTF8 (6531), ENHANCEDSTATUSCODES (2034), STARTTLS (3207),
AUTH PLAIN/LOGIN (4954).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mxpress.protocol.server_checks import Refusal, check_recipient
from mxpress.protocol.server_commands import SaslExchange, parse_mail, parse_rcpt, reply_line
from mxpress.protocol.server_data import DataReader
from mxpress.protocol.server_events import (
    AuthRequest,
    DataComplete,
    Event,
    MailFrom,
    Quit,
    RcptTo,
    Rejected,
    ServerConfig,
    StartTLS,
)

# RFC 4954 §4: an AUTH command with its initial response may be 12288 octets; every other
# command line is far shorter (RFC 5321 §4.5.3.1.4: 512 plus extension parameters).
MAX_COMMAND_LINE = 12288

# States; Final, so that compiled (mypyc) they are constants, not module lookups.
_COMMAND: Final = 0
_DATA: Final = 1
_AUTH: Final = 2
_CLOSED: Final = 3

OK = b"250 2.0.0 Ok\r\n"
_MAIL_OK = b"250 2.1.0 Ok\r\n"
_RCPT_OK = b"250 2.1.5 Ok\r\n"
_RCPT_DUPLICATE = b"250 2.1.5 Ok (duplicate)\r\n"
_START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_NEED_HELO = b"503 5.5.1 Error: send HELO or EHLO first\r\n"
_NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
_NOT_IMPLEMENTED = b"502 5.5.1 Command not implemented\r\n"
_TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
# Requests of other protocols sent to an SMTP port (cross-protocol attacks): hang up.
_FORBIDDEN = frozenset({"GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS"})


class ServerMachine:
    """One SMTP server connection's protocol state. See the module doc."""

    __slots__ = (
        "_buf",
        "_config",
        "_data",
        "_errors",
        "_out",
        "_pending",
        "_pos",
        "_recipients",
        "_sasl",
        "_sender",
        "_skip_line",
        "_smtputf8",
        "_state",
        "auth_user",
        "extended",
        "helo",
        "tls",
    )

    def __init__(self, config: ServerConfig, *, tls: bool = False) -> None:
        self._config = config
        self.tls = tls  # implicit TLS, or after tls_started()
        self.helo: str | None = None
        self.extended = False  # EHLO rather than HELO
        self.auth_user: str | None = None
        self._buf = b""
        self._pos = 0
        self._out: list[bytes] = [config.greeting]
        self._state = _COMMAND
        self._pending: Event | None = None
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._smtputf8 = False
        self._data: DataReader | None = None
        self._sasl: SaslExchange | None = None
        self._errors = 0
        self._skip_line = False  # the rest of an over-long line is dropped

    # --- what the driver reads -----------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._sender is not None

    @property
    def busy(self) -> bool:
        """An event awaits its answer, or a message or an AUTH exchange is under way."""
        return self._pending is not None or self._state in (_DATA, _AUTH)

    @property
    def waiting(self) -> bool:
        """An event awaits the driver's answer (the client is not to blame for the wait)."""
        return self._pending is not None

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_output(self) -> bytes:
        """Everything to send now, as one piece."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # --- input -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self._state == _CLOSED or type(self._pending) is StartTLS:
            return  # after STARTTLS, plaintext sent ahead is dropped (RFC 3207 §4.2)
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf = self._buf + data if self._buf else bytes(data)

    def next_event(self) -> Event | None:
        """Handle buffered input up to the next event; None: needs input or an answer."""
        while self._pending is None:
            state = self._state
            if state == _DATA:
                event = self._data_step()
                if event is None:
                    break
                return event
            if state == _CLOSED:
                break
            buf, pos = self._buf, self._pos
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if self._skip_line or len(buf) - pos > MAX_COMMAND_LINE:
                    if not self._skip_line:
                        self._skip_line = True
                        self._error(b"500 5.5.2 Error: line too long\r\n")
                    self._pos = max(pos, len(buf) - 1)  # keep a CR that may start the CRLF
                break
            self._pos = nl + 2
            if self._skip_line:  # the end of a line that was too long
                self._skip_line = False
            elif nl - pos > MAX_COMMAND_LINE:
                self._error(b"500 5.5.2 Error: line too long\r\n")
            else:
                event = self._command(buf[pos:nl])
                if event is not None:
                    return event
        if self._pos == len(self._buf):
            self._buf, self._pos = b"", 0
        return None

    # --- the driver's answers ----------------------------------------------------------------

    def accept(self, reply: str | None = None) -> None:
        """Say yes to the pending MailFrom, RcptTo or DataComplete (reply: the text)."""
        line = None if reply is None else reply_line(reply)
        event = self._answer(MailFrom, RcptTo, DataComplete)
        if type(event) is MailFrom:
            self._sender = event.sender
            self._smtputf8 = event.smtputf8
            self._out.append(line or _MAIL_OK)
        elif type(event) is RcptTo:
            self._recipients.append(event.recipient)
            self._out.append(line or _RCPT_OK)
        else:
            self._out.append(line or OK)

    def accept_auth(self, user: str) -> None:
        """The pending AuthRequest's credentials are right: the session is `user`'s."""
        self._answer(AuthRequest)
        self.auth_user = user
        self._out.append(_AUTH_OK)

    def refuse(self, reply: str) -> None:
        """Say no to the pending event with this reply line; the session goes on."""
        line = reply_line(reply)
        self._answer(MailFrom, RcptTo, DataComplete, AuthRequest)
        self._out.append(line)

    def tls_started(self) -> None:
        """The handshake after STARTTLS is done: start over (RFC 3207 §4.2)."""
        self._answer(StartTLS)
        self.tls = True
        self.helo, self.extended, self.auth_user = None, False, None
        self._reset_transaction()

    def shutdown(self, reply: str) -> None:
        """Send this last reply (a 421) and take no more input; the driver closes."""
        self._pending = None
        self._state = _CLOSED
        self._out.append(reply_line(reply))

    def _answer(self, *kinds: type[Event]) -> Event:
        event = self._pending
        if type(event) not in kinds:
            raise RuntimeError(f"{type(event).__name__} is not waiting for this answer")
        assert event is not None
        self._pending = None
        return event

    # --- commands --------------------------------------------------------------------------

    def _command(self, raw: bytes) -> Event | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(b"500 5.5.2 Error: command is not UTF-8\r\n")
        if not line.isprintable():  # CR, LF, NUL, other controls: never part of a command
            return self._error(b"500 5.5.2 Error: control character in command\r\n")
        if self._state == _AUTH:
            return self._sasl_step(line)
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        if handler is not None:
            return handler(self, arg.strip(" "))
        if verb in _FORBIDDEN:
            self.shutdown("421 4.7.0 Not an SMTP command, closing connection")
            return None
        return self._error(b"500 5.5.2 Error: command not recognized\r\n")

    def _error(self, reply: bytes) -> Event | None:
        """Send a 5xx for a bad command; too many of them close the connection."""
        self._errors += 1
        if self._errors >= self._config.max_errors:
            self.shutdown(_TOO_MANY_ERRORS)
        else:
            self._out.append(reply)
        return None  # (so that a handler can `return self._error(...)`)

    def _refused(self, refusal: Refusal) -> Rejected:
        self._out.append(reply_line(refusal[1]))
        return Rejected(refusal[0])

    def _reset_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._smtputf8 = False

    def _ehlo(self, arg: str) -> Event | None:
        if not arg:
            return self._error(b"501 5.5.4 Syntax: EHLO hostname\r\n")
        self.helo, self.extended = arg, True
        self._reset_transaction()
        self._out.append(self._config.ehlo_tls if self.tls else self._config.ehlo_plain)
        return None

    def _helo(self, arg: str) -> Event | None:
        if not arg:
            return self._error(b"501 5.5.4 Syntax: HELO hostname\r\n")
        self.helo, self.extended = arg, False
        self._reset_transaction()
        self._out.append(f"250 {self._config.hostname}\r\n".encode("ascii"))
        return None

    def _mail(self, arg: str) -> Event | None:
        if self.helo is None:
            return self._error(_NEED_HELO)
        if self._sender is not None:
            return self._error(b"503 5.5.1 Error: nested MAIL command\r\n")
        if arg[:5].upper() != "FROM:":
            return self._error(b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n")
        event = parse_mail(arg[5:], self._config)
        if isinstance(event, bytes):
            return self._error(event)
        if isinstance(event, tuple):
            return self._refused(event)
        self._pending = event
        return event

    def _rcpt(self, arg: str) -> Event | None:
        if self._sender is None:
            return self._error(_NEED_MAIL)
        if arg[:3].upper() != "TO:":
            return self._error(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
        recipient = parse_rcpt(arg[3:])
        if isinstance(recipient, bytes):
            return self._error(recipient)
        if isinstance(recipient, tuple):
            return self._refused(recipient)
        if recipient in self._recipients:
            self._out.append(_RCPT_DUPLICATE)
            return None
        refusal = check_recipient(
            recipient,
            smtputf8=self._smtputf8,
            count=len(self._recipients),
            max_recipients=self._config.max_recipients,
        )
        if refusal is not None:
            return self._refused(refusal)
        event = RcptTo(recipient)
        self._pending = event
        return event

    def _data_cmd(self, arg: str) -> Event | None:
        if self._sender is None:
            return self._error(_NEED_MAIL)
        if not self._recipients:
            return self._error(b"503 5.5.1 Error: need RCPT command\r\n")
        if arg:
            return self._error(b"501 5.5.4 Syntax: DATA\r\n")
        config = self._config
        self._data = DataReader(config.max_message_size, config.max_header_size)
        self._state = _DATA
        self._out.append(_START_DATA)
        return None

    def _data_step(self) -> Event | None:
        reader = self._data
        assert reader is not None
        self._pos, done = reader.feed(self._buf, self._pos)
        if not done:
            return None
        data, refusal = reader.finish()
        sender, recipients, smtputf8 = self._sender or "", self._recipients, self._smtputf8
        self._data = None
        self._state = _COMMAND
        self._reset_transaction()  # the transaction ends here, whatever the reply
        if refusal is not None:
            return self._refused(refusal)
        event = DataComplete(sender, tuple(recipients), data, smtputf8)
        self._pending = event
        return event

    def _rset(self, arg: str) -> Event | None:
        if arg:
            return self._error(b"501 5.5.4 Syntax: RSET\r\n")
        self._reset_transaction()
        self._out.append(OK)
        return None

    def _noop(self, arg: str) -> Event | None:
        self._out.append(OK)  # an argument is allowed and ignored (RFC 5321 §4.1.1.9)
        return None

    def _quit(self, arg: str) -> Event | None:
        self._state = _CLOSED
        self._out.append(_BYE)
        return Quit()

    def _vrfy(self, arg: str) -> Event | None:
        if not arg:
            return self._error(b"501 5.5.4 Syntax: VRFY address\r\n")
        self._out.append(b"252 2.5.2 Cannot VRFY user, but will accept the message\r\n")
        return None

    def _not_implemented(self, arg: str) -> Event | None:
        self._out.append(_NOT_IMPLEMENTED)
        return None

    def _starttls(self, arg: str) -> Event | None:
        if self.tls:
            return self._error(b"503 5.5.1 Error: TLS already active\r\n")
        if not self._config.starttls:
            return self._error(b"502 5.5.1 STARTTLS not available\r\n")
        if arg:
            return self._error(b"501 5.5.4 Syntax: STARTTLS\r\n")
        if self._sender is not None:
            return self._error(b"503 5.5.1 Error: MAIL transaction in progress\r\n")
        self._out.append(b"220 2.0.0 Ready to start TLS\r\n")
        self._buf, self._pos = b"", 0  # anything pipelined after STARTTLS is dropped
        event = StartTLS()
        self._pending = event
        return event

    # --- AUTH (RFC 4954) -------------------------------------------------------------------

    def _auth(self, arg: str) -> Event | None:
        config = self._config
        if self.helo is None:
            return self._error(_NEED_HELO)
        if not self.extended or not config.auth_mechanisms:
            return self._error(b"502 5.5.1 AUTH not available\r\n")
        if config.auth_requires_tls and not self.tls:
            self._out.append(
                b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
            )
            return None
        if self.auth_user is not None:
            return self._error(b"503 5.5.1 Already authenticated\r\n")
        if self._sender is not None:
            return self._error(b"503 5.5.1 AUTH not allowed during a mail transaction\r\n")
        args = arg.split()
        if len(args) not in (1, 2):
            return self._error(b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n")
        mechanism = args[0].upper()
        if mechanism not in config.auth_mechanisms:
            return self._error(b"504 5.5.4 Unrecognized authentication type\r\n")
        self._sasl = SaslExchange(mechanism)
        return self._sasl_step(args[1] if len(args) == 2 else None)

    def _sasl_step(self, response: str | None) -> Event | None:
        assert self._sasl is not None
        result = self._sasl.step(response)
        if isinstance(result, AuthRequest):
            self._state, self._sasl = _COMMAND, None
            self._pending = result
            return result
        if result.startswith(b"334"):
            self._state = _AUTH
            self._out.append(result)
            return None
        self._state, self._sasl = _COMMAND, None
        return self._error(result)


_HANDLERS: dict[str, Callable[[ServerMachine, str], Event | None]] = {
    "EHLO": ServerMachine._ehlo,
    "HELO": ServerMachine._helo,
    "MAIL": ServerMachine._mail,
    "RCPT": ServerMachine._rcpt,
    "DATA": ServerMachine._data_cmd,
    "RSET": ServerMachine._rset,
    "NOOP": ServerMachine._noop,
    "QUIT": ServerMachine._quit,
    "VRFY": ServerMachine._vrfy,
    "STARTTLS": ServerMachine._starttls,
    "AUTH": ServerMachine._auth,
    "HELP": ServerMachine._not_implemented,
    "EXPN": ServerMachine._not_implemented,
    "BDAT": ServerMachine._not_implemented,
    "ETRN": ServerMachine._not_implemented,
}
