"""`TimingStore`: a TLS session store that notes how long building SSL contexts took."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from mxpress.transport.tls import TLSSessionStore

Clock = Callable[[], float]


class TimingStore(TLSSessionStore):
    """The caller's store, noting the time spent building SSL contexts: the first one
    loads the CA certificates (milliseconds) inside the session's setup, between the
    phases the session measures, and would otherwise hide in the pool's share."""

    def __init__(self, inner: TLSSessionStore, clock: Clock) -> None:
        super().__init__()
        self._inner = inner
        self._clock = clock
        self._seen: set[tuple[bool, str | None]] = set()
        self.built = 0  # contexts asked for the first time
        self.seconds = 0.0  # time spent in context()

    def context(self, *, verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
        start = self._clock()
        try:
            return self._inner.context(verify=verify, cafile=cafile)
        finally:
            self.seconds += self._clock() - start
            if (verify, cafile) not in self._seen:
                self._seen.add((verify, cafile))
                self.built += 1

    def get(
        self, host: str, port: int, sni: str | None, context: ssl.SSLContext
    ) -> ssl.SSLSession | None:
        return self._inner.get(host, port, sni, context)

    def put(
        self,
        host: str,
        port: int,
        sni: str | None,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None,
    ) -> None:
        self._inner.put(host, port, sni, context, session)

    def __len__(self) -> int:
        return len(self._inner)
