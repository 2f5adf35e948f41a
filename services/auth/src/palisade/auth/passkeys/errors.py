"""Passkey (WebAuthn) exceptions: each has a status, a stable code and a safe message.

Status choices, one per kind of problem so clients can act on them alike everywhere:
  malformed response JSON/CBOR/base64url   400 invalid_passkey_credential
  unknown, used, expired or foreign challenge 400 challenge_invalid (registration and login)
  registration response fails verification  400 passkey_registration_failed
  login assertion fails (any reason)        401 passkey_verification_failed
  credential id already registered          409 passkey_already_registered
Messages never say whether an account or a credential exists.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import InvalidArgument, NotFound, PalisadeError, Unauthenticated


class InvalidPasskeyCredential(InvalidArgument):
    """The WebAuthn response is not well-formed (shape, base64url, JSON or CBOR)."""

    code = "invalid_passkey_credential"
    default_message = "the passkey response is malformed"


class ChallengeInvalid(InvalidArgument):
    """The ceremony's challenge is unknown, used, expired, or for another purpose or user."""

    code = "challenge_invalid"
    default_message = "this passkey request has expired or was already used; start again"


class PasskeyRegistrationFailed(InvalidArgument):
    code = "passkey_registration_failed"
    default_message = "the passkey could not be verified"


class PasskeyVerificationFailed(Unauthenticated):
    code = "passkey_verification_failed"
    default_message = "the passkey could not be verified"


class PasskeyAlreadyRegistered(PalisadeError):
    status = grpc.StatusCode.ALREADY_EXISTS
    code = "passkey_already_registered"
    default_message = "this passkey is already registered"


class PasskeyLimitReached(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "passkey_limit_reached"
    default_message = "too many passkeys; remove one first"


class InvalidPasskeyName(InvalidArgument):
    code = "invalid_passkey_name"
    default_message = "passkey name must be 1 to 100 printable characters"


class PasskeyNotFound(NotFound):
    code = "not_found"
    default_message = "passkey not found"
