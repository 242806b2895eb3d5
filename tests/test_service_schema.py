"""schemathesis against the service's own OpenAPI schema (through ASGI, no socket): generated requests,
schema-valid and schema-violating, to every operation of an app that has an index. No answer may be a
server error, and every answer must have a status, content type and body that the schema documents.

Run:  .venv/bin/python -m pytest tests/test_service_schema.py -q
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_support import FakeIndex, load_digits, write_images

from vitkit.service.app import create_app
from vitkit.service.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = 40  # per operation and mode; derandomized, so a run is reproducible
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    model = load_digits()
    index = FakeIndex(model, write_images(tmp_path_factory.mktemp("indexed"), 4), ["a", "b", "c", "d"])
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(Engine(model, threads=1), index))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_only_documented_answers(api_schema, mode, report):
    statuses: Counter = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    if mode is GenerationMode.NEGATIVE:  # only operations with inputs can be sent invalid ones
        operations = [op for op in operations if op.body or list(op.iter_parameters())]
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call_and_validate(checks=CHECKS)
            statuses[response.status_code] += 1

        check()
    assert statuses and max(statuses) < 500
    report(f"schemathesis ({mode.value}): {sum(statuses.values())} requests to {len(operations)} operations, "
           f"statuses {dict(sorted(statuses.items()))}, no server error")
