from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, aiosmtpd_server


@pytest.fixture
def sink_handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def sink_server(sink_handler: RecordingHandler) -> Iterator[AiosmtpdServer]:
    with start_lab_server(lambda: aiosmtpd_server(sink_handler)) as server:
        yield server
