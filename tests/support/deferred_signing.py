"""Test channels that sign caller assertions per call, as real clients do.

An assertion is bound to the method it is sent to and accepted once, so a test cannot build
metadata once and pass it to several calls. Harnesses hand out a marker instead
(`signing.marker(issuer, principal=..., **claims)`), and the channel's interceptor replaces it
with a fresh assertion for the method actually called. Metadata without a marker (forged or
captured assertions in the tests that are about them) passes through untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc

from palisade.common.caller import CALLER_METADATA_KEY, AssertionSigner
from palisade.common.grpc_server import CHANNEL_OPTIONS

MARKER_KEY = "x-test-sign"


class DeferredSigning:
    """Markers and the interceptor that turns them into assertions for one audience."""

    def __init__(self, *, audience: str, signer_for: Callable[[str], AssertionSigner]) -> None:
        self._audience = audience
        self._signer_for = signer_for
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}

    def marker(self, issuer: str, **claims: Any) -> tuple[tuple[str, str], ...]:
        claims.setdefault("principal", f"service:{issuer}")
        claims.setdefault("request_id", uuid.uuid4().hex)
        key = uuid.uuid4().hex
        self._pending[key] = (issuer, claims)
        return ((MARKER_KEY, key),)

    def assertion(self, method: str, marker: str) -> str:
        issuer, claims = self._pending[marker]
        return self._signer_for(issuer).sign(audience=self._audience, method=method, **claims)

    def _details(self, details: Any) -> Any:
        entries = list(details.metadata or ())
        markers = [v for k, v in entries if k == MARKER_KEY]
        if not markers:
            return details
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        rest = [(k, v) for k, v in entries if k != MARKER_KEY]
        rest.append((CALLER_METADATA_KEY, self.assertion(method, markers[0])))
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=grpc.aio.Metadata(*rest),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [_UnaryUnary(self), _UnaryStream(self)]

    def channel(self, target: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=self.interceptors()
        )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, signing: DeferredSigning) -> None:
        self._signing = signing

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._signing._details(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, signing: DeferredSigning) -> None:
        self._signing = signing

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._signing._details(details), request)
