"""Schemathesis against /api/openapi.json of a real server: generated requests to every operation,
with a bounded number of cases each, must never get a 5xx, and every response must match the
documented status codes, content types and schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from tests.api_helpers import new_key, signed_in_admin, start_with_admin
from tests.test_api import MANUAL_FLOW

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Cases per operation: enough to find crashes on odd input, bounded so `make test` stays quick.
EXAMPLES = 6


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    srv = start_with_admin(tmp_path_factory.mktemp("fuzz") / "data", "web")
    admin = signed_in_admin(srv)
    admin.post("/tenants/default/flows", json=MANUAL_FLOW)
    yield srv, new_key(admin, "default", "owner")
    srv.stop()


def test_generated_requests_get_documented_answers_and_never_a_server_error(target):
    srv, key = target
    schema = schemathesis.openapi.from_url(f"{srv.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40

    for operation in operations:
        if operation.path.startswith("/api/v1/session") or operation.path == "/api/v1/sessions":
            continue  # signing in and out changes session state; covered in test_api.py

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            if "tenant" in (case.path_parameters or {}):
                case.path_parameters["tenant"] = "default"  # reach the handlers, not only the tenant guard
            case.call_and_validate(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

        call()
