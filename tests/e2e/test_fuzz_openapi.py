"""Schema-driven fuzzing through the gateway: no 5xx, and every answer matches the document."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _exercise(
    operation: Any,
    mode: Any,
    base_url: str,
    headers: dict[str, str],
    checks: list[Any],
    failures: list[str],
) -> None:
    """Runs generated cases (schema-valid or deliberately invalid) against one operation."""
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers)
        label = f"{case.method} {case.formatted_path} -> {response.status_code}"
        if response.status_code >= 500:
            failures.append(f"server error: {label}: {response.text[:200]}")
            return
        try:
            case.validate_response(response, checks=checks)
        except Exception as exc:  # collect every violation, then report them together
            failures.append(f"schema violation: {label}: {str(exc)[:300]}")

    from hypothesis.errors import Unsatisfiable

    try:
        exercise()
    except Unsatisfiable:
        # An operation that takes no input at all (GET /v1/audit/keys: public, no parameters)
        # has no invalid input to send; its valid calls were made in the positive mode.
        if mode.name != "NEGATIVE":
            raise


def _fuzz(base_url: str, document: dict, token: str) -> list[str]:
    import schemathesis
    from schemathesis import GenerationMode, checks

    # What the issue asks for: no 5xx, and no answer that contradicts the document (status
    # code, content type, body schema, headers), and invalid input refused. Not "positive data
    # acceptance": the schema cannot express every domain rule (common passwords, email syntax).
    wanted = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
        checks.negative_data_rejection,
    ]
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # Signed in where the answer depends on it: one's own account, and the resource routes
        # (any member may call them), so the generated input reaches the visitors service.
        signed_in = operation.path.startswith(("/v1/me", "/v1/visitors", "/v1/chats"))
        headers = {"Authorization": f"Bearer {token}"} if signed_in else {}
        for mode in GenerationMode:
            _exercise(operation, mode, base_url, headers, wanted, failures)
    return failures


# Every operation of the document, 30 cases per generation mode, signed in on the resource
# routes (each a real call through the gateway to the visitors service): minutes on a loaded
# machine, more than the suite's default 120 s per test.
@pytest.mark.timeout(600)
async def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_violation(suite) -> None:
    status, _, body = await suite.call("GET", "/openapi.json")
    assert status == 200
    document = json.loads(body)
    from openapi_spec_validator import validate

    validate(document)  # a valid OpenAPI document
    tokens = await suite.sign_up_and_log_in("fuzz@example.com")
    failures = await asyncio.to_thread(
        _fuzz, suite.gateway.base_url, document, tokens["accessToken"]
    )
    assert failures == [], "\n".join(sorted(set(failures))[:20])
