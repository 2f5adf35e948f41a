"""The chats domain's exceptions: each has a status, a stable code and a safe message.

A chat, visitor or page of another workspace or mode answers exactly as an unknown one does, so
a caller learns nothing about ids outside its own workspace and mode.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import InvalidArgument, NotFound, PalisadeError, PermissionDenied


class VisitorNotFound(NotFound):
    code = "visitor_not_found"
    default_message = "visitor not found"


class ChatNotFound(NotFound):
    code = "chat_not_found"
    default_message = "chat not found"


class VisitorErased(PalisadeError):
    # The visitor exists but asked to be erased: the request is refused for good, not retried.
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "visitor_erased"
    default_message = "the visitor has been erased"


class InvalidBody(InvalidArgument):
    code = "invalid_body"
    default_message = (
        "body must be text without NUL or control characters other than tab and newlines"
    )


class BodyTooLong(InvalidArgument):
    code = "body_too_long"
    default_message = "body must be at most 10000 characters"


class InvalidQuery(InvalidArgument):
    code = "invalid_query"
    default_message = "q must be 1 to 200 characters holding at least one word"


class InvalidPageSize(InvalidArgument):
    code = "invalid_page_size"
    default_message = "pageSize must be 0 (the default, 50) to 100"


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "the page token is invalid"


class CallerNotAllowed(PermissionDenied):
    """Chats are for a workspace's people and API keys; a service or an anonymous client (or
    an assertion without a workspace) has none to read or write."""

    code = "permission_denied"
    default_message = "chats need a workspace member or an API key of the workspace"


class MissingScope(PermissionDenied):
    # The gateway's code for the same refusal, so clients handle both alike.
    code = "insufficient_scope"
    default_message = "this API key lacks the scope this method needs"
