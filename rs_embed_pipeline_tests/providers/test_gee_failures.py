"""How the Earth Engine client classifies a failed call (retry the same size, ask for less, give
up), on the exceptions the ee client raises: googleapiclient's HttpError (found by its name and
``resp.status``, as the client does) and the transport's own errors."""

from __future__ import annotations

import pytest

from rs_embed_pipeline.providers.gee.client import classify_failure


class _Response(dict):
    """httplib2's response: a dict of headers with a ``status``."""

    def __init__(self, status: int, headers: dict[str, str] | None = None):
        super().__init__(headers or {})
        self.status = status


class HttpError(Exception):  # the name is what the client recognises
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None):
        super().__init__(text)
        self.resp = _Response(status, headers)


@pytest.mark.parametrize(("error", "kind", "status", "retry_after"), [
    (HttpError(429, "Too Many Requests", {"retry-after": "3"}), "throttled", 429, 3.0),
    (HttpError(400, "Too many concurrent aggregations."), "busy", 400, None),
    (TimeoutError("The read operation timed out"), "client_timeout", None, None),
    (HttpError(400, "Total request size (56623104 bytes) must be less than or equal to 50331648 bytes."),
     "too_large", 400, None),
    (HttpError(500, "User memory limit exceeded."), "too_large", 500, None),
    (HttpError(503, "Service Unavailable"), "server_error", 503, None),
    (ConnectionResetError("Connection reset by peer"), "network", None, None),
    (HttpError(403, "Permission denied on project x"), "final", 403, None),
    (ValueError("unexpected answer"), "final", None, None),
])
def test_each_failure_is_classified_with_its_status_and_retry_after(error, kind, status, retry_after):
    failure = classify_failure(error, f"{type(error).__name__}: {error}")
    assert (failure.kind, failure.status, failure.retry_after) == (kind, status, retry_after)


def test_an_http_error_behind_another_exception_is_found():
    try:
        try:
            raise HttpError(502, "Bad Gateway")
        except HttpError as inner:
            raise RuntimeError("ee call failed") from inner
    except RuntimeError as outer:
        failure = classify_failure(outer, "RuntimeError: ee call failed")
    assert (failure.kind, failure.status) == ("server_error", 502)
