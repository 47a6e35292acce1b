"""The HTTP API against its own OpenAPI document, with schemathesis: generated requests to
every operation of a running server never get a 5xx, and every answer has a status code,
content type and body that the document declares. A few examples per operation keep it fast.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pigeon.web.app import create_app
from pigeon.web.context import WebContext
from tests.servers import make_config
from tests.web_helpers import USER, WebServer, running_web, send_mail


def _document() -> dict[str, Any]:
    """The document the app publishes, made without a running server (schemathesis needs it
    when the tests are collected)."""
    with tempfile.TemporaryDirectory() as directory:
        context = WebContext.open(make_config(Path(directory)))
        try:
            return create_app(context).openapi()
        finally:
            context.close()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with running_web(tmp_path_factory.mktemp("openapi")) as server:
        send_mail(server.smtp_address, USER, "Something to find", html="<p>hi</p>")
        yield server


def test_the_published_document_is_the_one_tested(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=10) as client:
        published = client.get("/api/openapi.json")
    assert published.status_code == 200
    assert published.json() == DOCUMENT
    assert "bearer" in str(DOCUMENT["components"]["securitySchemes"]).lower()


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_keeps_to_its_document(case: schemathesis.Case[Any], web: WebServer) -> None:
    case.call_and_validate(
        base_url=web.url,
        headers={"Authorization": f"Bearer {web.admin_token}"},
        timeout=20,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        excluded_checks=[],
    )
