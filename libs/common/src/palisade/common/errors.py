"""The root of every service's exception tree, and how each maps to a gRPC status.

A service's errors.py subclasses PalisadeError. The error-mapping interceptor turns them into
the status code and safe message declared here, with the stable machine code in trailing
metadata; anything else becomes INTERNAL with a generic message (details stay in server logs).
Messages are written by us, never interpolated from secrets, plaintext or SQL.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

ERROR_CODE_METADATA_KEY = "palisade-error-code"


class PalisadeError(Exception):
    """A failure whose status, stable code and message are safe to show to the caller."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    code: ClassVar[str] = "internal"
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra safe facts for the caller (e.g. retry-after); the code is always sent."""
        return ()


class InvalidArgument(PalisadeError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_argument"
    default_message = "invalid argument"


class Unauthenticated(PalisadeError):
    status = grpc.StatusCode.UNAUTHENTICATED
    code = "unauthenticated"
    default_message = "missing or invalid caller assertion"


class PermissionDenied(PalisadeError):
    status = grpc.StatusCode.PERMISSION_DENIED
    code = "permission_denied"
    default_message = "caller is not allowed to use this method"


class NotFound(PalisadeError):
    status = grpc.StatusCode.NOT_FOUND
    code = "not_found"
    default_message = "not found"


class Unavailable(PalisadeError):
    status = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"
    default_message = "a dependency is unavailable"


class SubjectErased(PalisadeError):
    """The data belongs to a subject whose key was shredded: it is gone for good, by design
    (an account or visitor was deleted). Not an integrity fault: treat the value as absent.
    (Raised by the crypto client; here so that the client's helpers can raise it too.)"""

    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "subject_erased"
    default_message = "the data subject has been erased"
