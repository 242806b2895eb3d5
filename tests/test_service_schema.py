"""schemathesis against the service's own OpenAPI schema (through ASGI, no socket): generated requests,
schema-valid and schema-violating, to every operation of an app that has an index (and of one with a text tower:
text search, /v1/embeddings). No answer may be a
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


@pytest.fixture(scope="module", params=["digits", pytest.param("tiny-clip-with-text", marks=pytest.mark.slow)])
def api_schema(request, tmp_path_factory):
    """The digits classifier with a stand-in index; and a tiny CLIP with a real index and its text tower (text
    search and /v1/embeddings answer there)."""
    if request.param == "digits":
        model = load_digits()
        index = FakeIndex(model, write_images(tmp_path_factory.mktemp("indexed"), 4), ["a", "b", "c", "d"])
        return schemathesis.openapi.from_asgi("/openapi.json", create_app(Engine(model, threads=1), index))
    import vitkit
    from vitkit.image_text import load_text
    from vitkit.index import ImageIndex

    folder = str(request.getfixturevalue("tiny_image_text")["clip"])
    model, text = vitkit.load(folder), load_text(folder)
    index = ImageIndex.create(tmp_path_factory.mktemp("text-index") / "db", model, text=text)
    index.add([str(p) for p in write_images(tmp_path_factory.mktemp("indexed-text"), 4)], model, progress=False,
              workers=0)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(Engine(model, threads=1), index, text=text))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_only_documented_answers(api_schema, mode, report, request):
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
    report(f"schemathesis ({mode.value}, {request.node.callspec.id}): {sum(statuses.values())} requests to {len(operations)} operations, "
           f"statuses {dict(sorted(statuses.items()))}, no server error")
