"""The auth service's exceptions: each has a status, a stable code and a safe message.

Messages never say whether an account exists.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import (
    InvalidArgument,
    NotFound,
    PalisadeError,
    PermissionDenied,
    Unauthenticated,
)


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"
    default_message = "email or password is incorrect"


class InvalidEmail(InvalidArgument):
    code = "invalid_email"
    default_message = "not a valid email address"


class WeakPassword(InvalidArgument):
    """A new password breaks the policy; `code` says which rule."""

    code = "weak_password"
    default_message = "password does not meet the policy"


class PasswordTooShort(WeakPassword):
    code = "password_too_short"


class PasswordTooLong(WeakPassword):
    code = "password_too_long"


class PasswordTooCommon(WeakPassword):
    code = "password_too_common"
    default_message = "this password is too common or has appeared in breaches"


class InvalidName(InvalidArgument):
    code = "invalid_name"
    default_message = "name must be 1 to 200 characters"


class InvalidToken(Unauthenticated):
    code = "invalid_token"
    default_message = "token is invalid"


class WrongTokenType(Unauthenticated):
    code = "wrong_token_type"
    default_message = "token is of the wrong kind for this request"


class TokenExpired(Unauthenticated):
    code = "token_expired"
    default_message = "token has expired"


class SessionRevoked(Unauthenticated):
    code = "session_revoked"
    default_message = "session has ended"


class TokenReused(Unauthenticated):
    code = "token_reused"
    default_message = "refresh token was already used; the session has been ended"


class Throttled(PalisadeError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "rate_limited"
    default_message = "too many attempts; try again later"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__()
        self.retry_after_seconds = max(1, retry_after_seconds)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(self.retry_after_seconds)),)


class SessionNotFound(NotFound):
    code = "not_found"
    default_message = "session not found"


class NotSignedIn(Unauthenticated):
    code = "unauthenticated"
    default_message = "this request needs a signed-in user"


class RecentAuthRequired(PermissionDenied):
    code = "recent_auth_required"
    default_message = "sign in again to make this change"


class InvalidMfaToken(Unauthenticated):
    code = "invalid_mfa_token"
    default_message = "the sign-in attempt has expired or was already completed; sign in again"


class InvalidMfaCode(Unauthenticated):
    code = "invalid_mfa_code"
    default_message = "the code is incorrect or was already used"


class MfaInputInvalid(InvalidArgument):
    code = "invalid_mfa_input"
    default_message = "send exactly one of code or backupCode"


class TotpAlreadyEnabled(PalisadeError):
    status = grpc.StatusCode.ALREADY_EXISTS
    code = "totp_already_enabled"
    default_message = "an authenticator app is already enabled; disable it first"


class TotpNotEnrolled(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "totp_not_enrolled"
    default_message = "no authenticator app enrolment to act on"


class InvalidMagicLink(Unauthenticated):
    code = "invalid_magic_link"
    default_message = "this sign-in link is invalid, expired or already used"


# -- email verification, email change, PKCE-bound magic links ---------------------------------


class InvalidVerificationLink(InvalidArgument):
    code = "invalid_verification_link"
    default_message = "this verification link is invalid, expired, already used or replaced"


class InvalidNotMeLink(InvalidArgument):
    code = "invalid_not_me_link"
    default_message = "this link is invalid, expired or already used"


class EmailUnavailable(PalisadeError):
    """An email change's new address was taken by another account before it was confirmed."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "email_unavailable"
    default_message = "this address can no longer be used for your account; nothing was changed"


class InvalidCodeChallenge(InvalidArgument):
    code = "invalid_code_challenge"
    default_message = (
        "codeChallenge must be the base64url (no padding) SHA-256 of a verifier: 43 characters"
        " of A-Z, a-z, 0-9, '-' and '_'"
    )


class InvalidCodeVerifier(InvalidArgument):
    code = "invalid_code_verifier"
    default_message = (
        "codeVerifier must be 43 to 128 characters of A-Z, a-z, 0-9, '-', '.', '_', '~'"
    )


class CodeVerifierRequired(Unauthenticated):
    code = "code_verifier_required"
    default_message = (
        "this sign-in link was requested with a code challenge: open it in the browser or app"
        " that asked for it"
    )


class CodeVerifierMismatch(Unauthenticated):
    code = "code_verifier_mismatch"
    default_message = (
        "this sign-in link belongs to another browser or app: open it where it was requested"
    )


# -- password reset ---------------------------------------------------------------------------


class InvalidResetToken(Unauthenticated):
    """Unknown, used, replaced by a newer link, or its account can no longer sign in: one
    answer, so the link's holder learns nothing about the account."""

    code = "invalid_reset_token"
    default_message = "this password-reset link is invalid, already used or replaced; ask again"


class ResetTokenExpired(Unauthenticated):
    code = "reset_token_expired"
    default_message = "this password-reset link has expired; ask for a new one"


# -- disabled accounts ------------------------------------------------------------------------


class AccountDisabled(PermissionDenied):
    """Answered only after the caller proved the credential (a right password, a valid link or
    passkey assertion, a live refresh token): a wrong password still gets invalid_credentials,
    so this says nothing to someone who does not hold the account's credentials."""

    code = "account_disabled"
    default_message = "this account has been disabled"


class AccountNotFound(NotFound):
    """An operator named an account that does not exist (the CLI; never answered to clients)."""

    code = "account_not_found"
    default_message = "no account has this email address"


class OwnershipTransferRequired(PalisadeError):
    """Deleting the account would leave a workspace with members and no owner. Names no
    workspace or person: the caller sees their own workspaces and roles elsewhere."""

    status = grpc.StatusCode.ABORTED  # 409 at the gateway
    code = "ownership_transfer_required"
    default_message = (
        "you are the only owner of a workspace that has other members: make one of them an"
        " owner first"
    )
