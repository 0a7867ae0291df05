"""Schemathesis against the app's own OpenAPI schema: generated requests (valid and not) to every
operation, authenticated, over a real index. No 5xx, no response that breaks the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.access import AccessStore

EXAMPLES = 30  # per operation and generation mode; bounded so that CI stays quick


@pytest.fixture(scope="module")
def fuzz_target(api_settings: Settings, encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[object, str]]:
    store = AccessStore.open(tmp_path_factory.mktemp("fuzz-access"))
    key = store.create_key("fuzzer", "admin")[1]
    # schemathesis's host name; it also sends bad keys on purpose (the failure limit has its own test)
    settings = api_settings.model_copy(update={"allowed_hosts": ["testserver"], "auth_failure_limit": 100_000})
    service = build_service(settings, encoder=encoder)
    app = create_app(settings, service=service,
                     access=AccessControl(store=store, pseudonym_secret=store.pseudonym_secret()))
    yield schemathesis.openapi.from_asgi("/openapi.json", app), key
    service.close()


def test_schema_lists_every_operation(fuzz_target):
    schema, _ = fuzz_target
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {"POST /search/text", "POST /search/image", "POST /search/similar", "POST /search", "POST /search/batch",
            "POST /classify", "GET /images/{image_id}", "GET /images/{image_id}/preview", "GET /health",
            "GET /audit", "GET /presets", "GET /images/{image_id}/values", "GET /images/{image_id}/file",
            "GET /images/{image_id}/study", "GET /images/{image_id}/series", "POST /images/{image_id}/classify",
            "POST /render", "GET /whoami", "GET /windows"} <= labels


@pytest.mark.timeout(900)
def test_no_server_error_and_responses_match_the_schema(fuzz_target):
    schema, key = fuzz_target
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                             database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            # an upload can satisfy the schema and still not be an image: its 422 is right, so the
            # "schema-valid data must be accepted" check is left out; all the others run
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"},
                                   excluded_checks=[checks.positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # collect every operation's first failure, then report them all
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
