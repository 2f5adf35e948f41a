"""The visitors service's exceptions: each has a status, a stable code and a safe message.

Messages never contain PII, and never say whether a visitor of another workspace (or of the
other mode) exists: those are all visitor_not_found.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import InvalidArgument, NotFound, PalisadeError, PermissionDenied


class InvalidName(InvalidArgument):
    code = "invalid_name"
    default_message = "name must be 1 to 200 characters of text"


class InvalidEmail(InvalidArgument):
    code = "invalid_email"
    default_message = "email must be an email address of at most 254 characters"


class InvalidPhone(InvalidArgument):
    code = "invalid_phone"
    default_message = "phone must be an international (E.164) number, e.g. +4915112345678"


class PiiRequired(InvalidArgument):
    code = "pii_required"
    default_message = "a visitor needs at least one of name, email and phone"


class LookupRequired(InvalidArgument):
    code = "lookup_required"
    default_message = "give exactly one of email and phone"


class VisitorNotFound(NotFound):
    code = "visitor_not_found"
    default_message = "no such visitor"


class VisitorErased(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "visitor_erased"
    default_message = "the visitor has been erased"


class NotAWorkspaceCaller(PermissionDenied):
    code = "workspace_required"
    default_message = "this method needs a person or an API key of a workspace"


class KeyClaimsMissing(PermissionDenied):
    # An API key's assertion without its type or mode: defaulting either would fail open (a
    # publishable key taken for a secret one, a test key for a live one).
    code = "key_claims_missing"
    default_message = "this API key's caller assertion lacks its key type or mode"


class SecretKeyRequired(PermissionDenied):
    code = "secret_key_required"
    default_message = "publishable keys may not do this"
