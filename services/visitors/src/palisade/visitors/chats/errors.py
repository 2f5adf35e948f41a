"""The chats domain's exceptions: each has a status, a stable code and a safe message.

A chat, visitor or page of another workspace or mode answers exactly as an unknown one does, so
a caller learns nothing about ids outside its own workspace and mode.
"""

from __future__ import annotations

from palisade.common.errors import InvalidArgument, NotFound
from palisade.visitors.errors import VisitorErased, VisitorNotFound

# The visitors service's own, raised here too (one class per code).
__all__ = [
    "BodyTooLong",
    "ChatNotFound",
    "InvalidBody",
    "InvalidPageSize",
    "InvalidPageToken",
    "InvalidQuery",
    "VisitorErased",
    "VisitorNotFound",
]


class ChatNotFound(NotFound):
    code = "chat_not_found"
    default_message = "chat not found"


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
