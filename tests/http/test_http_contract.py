"""Contract test: schemathesis generates requests from /openapi.json and checks every
response against the document (status codes, content types, bodies, headers, auth)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from mxpress.observe.profiler import Profiler
from mxpress.server.http import api_key_digest, build_http_app
from tests.http.fake_store import FakeStore

KEY = "contract-test-key"
STORE = FakeStore()
# The profiler's cap bounds `seconds` in the document: generated captures stay short.
APP = build_http_app(
    STORE, api_keys={"contract": api_key_digest(KEY)}, profiler=Profiler(max_seconds=0.05)
)
# Auth through the document's bearerAuth scheme, so that schemathesis also sends requests
# without it (negative cases) and checks that they are refused.
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"bearerAuth": {"bearer": KEY}}},
        # Follow the links the document declares, not guessed ones: a guessed link from
        # DELETE /v1/queue/{id} to GET /v1/messages/{id} reads as "created, then lost".
        "phases": {"stateful": {"inference": {"algorithms": []}}},
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


def excluded_checks(case: schemathesis.Case[Any]) -> list[Any]:
    """A raw message's header section cannot be said in JSON Schema: random text is
    schema-valid but rightly refused. Every other check still runs on those cases."""
    raw = isinstance(case.body, dict) and "raw" in case.body
    return [positive_data_acceptance] if raw else []


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_openapi_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(excluded_checks=excluded_checks(case))


# Stateful: follow the document's links from a new message's id to get/hold/release/
# retry/delete it, so the checks also see responses about messages that exist.
class Workflow(schema.as_state_machine()):  # type: ignore[misc]
    def validate_response(
        self,
        response: schemathesis.Response,
        case: schemathesis.Case[Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        case.validate_response(
            response,
            excluded_checks=excluded_checks(case),
            transport_kwargs=kwargs or None,
            recorder=self.recorder,
        )


TestWorkflow = Workflow.TestCase
TestWorkflow.settings = settings(
    max_examples=5, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck)
)
