"""How the error-mapping stage answers database failures: a transaction Postgres rolled back to
break a deadlock or a serialisation failure is ABORTED transaction_conflict (409 at the gateway:
nothing was written, send it again), never 503 "database unavailable"; a dropped connection is
still UNAVAILABLE."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import psycopg.errors
import pytest
from sqlalchemy.exc import OperationalError

from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade.common.interceptors.base import RpcInfo
from palisade.common.interceptors.error_mapping import ErrorMappingInterceptor


class _Aborted(Exception):
    pass


class _Context:
    """The part of a servicer context the stage uses: abort() records and raises."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str, dict[str, str]] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, dict(trailing_metadata))
        raise _Aborted()


async def _answer(error: Exception) -> tuple[grpc.StatusCode, str]:
    info = RpcInfo(
        "/palisade.auth.v1.AuthService/Login",
        "palisade.auth.v1.AuthService",
        "Login",
        "unary_unary",
    )
    context = _Context()
    scope = ErrorMappingInterceptor().around(info, context)  # type: ignore[arg-type]
    with pytest.raises(_Aborted):
        await scope.__aexit__(type(error), error, None)
    assert context.aborted is not None
    code, _, metadata = context.aborted
    return code, metadata[ERROR_CODE_METADATA_KEY]


def _wrapped(driver_error: Exception) -> OperationalError:
    """As SQLAlchemy raises a driver's error from a statement."""
    return OperationalError("UPDATE sessions ...", None, driver_error)


@pytest.mark.parametrize(
    "driver_error",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access"),
    ],
)
async def test_a_transaction_conflict_is_aborted_not_unavailable(driver_error: Exception) -> None:
    assert await _answer(_wrapped(driver_error)) == (
        grpc.StatusCode.ABORTED,
        "transaction_conflict",
    )


async def test_a_lost_connection_is_still_unavailable() -> None:
    assert await _answer(_wrapped(psycopg.OperationalError("server closed the connection"))) == (
        grpc.StatusCode.UNAVAILABLE,
        "unavailable",
    )
