"""The audit service's exceptions: each has a status, a stable code and a safe message.

An invalid event names its position in the batch ("events[3]: ...") and never echoes the
value it refused: events carry IPs and user agents, and error messages reach logs.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import (
    InvalidArgument,
    PalisadeError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

# Trailing metadata of a refused batch: the index (from 0) of the event that was refused.
INVALID_ITEM_METADATA_KEY = "palisade-invalid-item"


class InvalidEvent(InvalidArgument):
    """One event of an Ingest batch is invalid: the whole batch is refused."""

    code = "invalid_event"
    default_message = "invalid event"

    def __init__(self, index: int, what: str | None = None) -> None:
        self.index = index
        super().__init__(f"events[{index}]: {what or self.default_message}")

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        # The forwarder sets aside exactly this event (palisade.common.audit_ingest).
        return ((INVALID_ITEM_METADATA_KEY, str(self.index)),)


class InvalidEventId(InvalidEvent):
    code = "invalid_event_id"
    default_message = "event_id must be 32 lower-case hex characters"


class UnknownEventType(InvalidEvent):
    code = "unknown_event_type"
    default_message = "type is not in the event catalogue"


class EventTypeNotAllowed(InvalidEvent):
    code = "event_type_not_allowed"
    default_message = "the calling service is not an emitter of this type (events.proto)"


class InvalidOccurredAt(InvalidEvent):
    code = "invalid_occurred_at"
    default_message = "occurred_at must be set, not before 2020 and not in the future"


class InvalidWorkspaceId(InvalidEvent):
    code = "invalid_workspace_id"
    default_message = "workspace_id must be empty or ws_ and 32 hex characters"


class UnknownWorkspace(InvalidEvent):
    code = "unknown_workspace"
    default_message = "workspace_id names no workspace"


class InvalidActor(InvalidEvent):
    code = "invalid_actor"
    default_message = (
        'actor must be "user:<id>", "apikey:<id>", "service:<name>", "system" or "anonymous"'
    )


class InvalidSubject(InvalidEvent):
    code = "invalid_subject"
    default_message = 'subject must be empty or "<user|apikey|visitor|invitation>:<id>"'


class InvalidIp(InvalidEvent):
    code = "invalid_ip"
    default_message = "ip must be empty or an IP address"


class InvalidOutcome(InvalidEvent):
    code = "invalid_outcome"
    default_message = 'outcome must be "success" or "failure"'


class InvalidReason(InvalidEvent):
    code = "invalid_reason"
    default_message = "reason must be at most 256 printable characters"


class InvalidDetails(InvalidEvent):
    code = "invalid_details"
    default_message = (
        "details must have at most 32 entries, keys [a-z][a-z0-9_]{0,63}, values of at most "
        "256 printable characters and 4096 bytes in all"
    )


class InvalidDevice(InvalidEvent):
    code = "invalid_device"
    default_message = "device must be at most 128 printable characters"


class BatchTooLarge(InvalidArgument):
    code = "batch_too_large"
    default_message = "too many events in one batch"


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "the page token is invalid"


class InvalidRange(InvalidArgument):
    code = "invalid_range"
    default_message = "since must not be after until"


class InvalidFilter(InvalidArgument):
    code = "invalid_filter"
    default_message = "actor and subject filters must be of the stored forms (e.g. user:<id>)"


class UnknownEventTypeFilter(InvalidArgument):
    code = "unknown_event_type"
    default_message = "type is not in the event catalogue"


class InvalidCursor(InvalidArgument):
    code = "invalid_cursor"
    default_message = "the stream cursor is invalid"


class NotSignedIn(Unauthenticated):
    code = "unauthenticated"
    default_message = "this request needs a signed-in user"


class RoleRequired(PermissionDenied):
    code = "permission_denied"
    default_message = "only workspace owners and admins read the workspace's security log"


class ServiceRequired(PermissionDenied):
    code = "permission_denied"
    default_message = "only Palisade services that record events may call this method"


class SubscriberRequired(PermissionDenied):
    code = "permission_denied"
    default_message = "only the security log's subscribers may read its stream"


class DirectoryUnavailable(Unavailable):
    code = "unavailable"
    default_message = "the workspace directory is unavailable"


class SigningKeyUnavailable(Unavailable):
    code = "unavailable"
    default_message = "the checkpoint signing key is unavailable"


class ChainIntegrityError(PalisadeError):
    """The chain failed verification: no checkpoint is signed over it (see the service log
    and `palisade-audit verify`)."""

    status = grpc.StatusCode.DATA_LOSS
    code = "chain_integrity"
    default_message = "the security log failed its integrity check; no checkpoint was signed"
