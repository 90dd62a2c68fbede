"""schemathesis over the service's OpenAPI spec, in process (ASGI): >= 1,000 generated requests,
valid and invalid, with and without the admin key, and not one 5xx."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from activedaemon.protect import load_classifier
from activedaemon.serve.app import create_app
from activedaemon.serve.gate import Gatekeeper
from activedaemon.serve.registry import Registry, sqlite_url
from activedaemon.tokens import TokenGenerator

ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
# Up to 7 x 2 x 120 requests; operations without parameters have few distinct cases and no
# invalid ones, so the total lands lower (about 1,300; asserted >= 1,000 below).
CASES_PER_OPERATION_AND_MODE = 120


def test_fuzz_openapi_no_server_errors(tiny_protected, tmp_path):
    model = load_classifier(tiny_protected)
    registry = Registry(sqlite_url(tmp_path / "fuzz.db"))
    registry.add_user("fuzzuser")
    gate = Gatekeeper(TokenGenerator.load("fashion-mnist-32"), model, registry,
                      model.card["class_names"])  # fmt: skip
    app = create_app(gate, ADMIN_KEY)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8, [op.label for op in operations]
    calls: dict[str, int] = {}
    server_errors: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=CASES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases every run (seeded by the test)
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode), with_key=st.booleans())
            def run(case, with_key):
                headers = {"X-Admin-Key": ADMIN_KEY} if with_key else None
                response = case.call(headers=headers)
                calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
                if response.status_code >= 500:
                    server_errors.append(f"{case.as_curl_command()} -> {response.status_code}")

            try:
                run()
            except Unsatisfiable:  # no invalid input exists (no parameters, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label
    total = sum(calls.values())
    print(f"schemathesis: {total} requests over {len(calls)} operations: {calls}")
    assert not server_errors, server_errors[:5]
    assert total >= 1000, calls
    registry.close()
