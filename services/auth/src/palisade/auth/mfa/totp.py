"""TOTP (RFC 6238) over HMAC-SHA1, 6 digits, 30 s steps, one step of drift either way.

pyotp computes the codes; the window, the constant-time comparison and the single-use rule
(the caller stores the accepted step) are ours.
"""

from __future__ import annotations

import hmac
import re

import pyotp

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1
_CODE = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    """A CSPRNG secret in base32, as authenticator apps take it."""
    return pyotp.random_base32(length=32)  # 32 base32 chars = 160 bits


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """otpauth://totp/Issuer:account?secret=...&issuer=Issuer (Google Authenticator's format)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer
    )


def step_at(unix_seconds: float) -> int:
    return int(unix_seconds // STEP_SECONDS)


def code_for_step(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def normalize_code(code: str) -> str | None:
    """Six digits (spaces allowed, as apps show "123 456"); None for anything else."""
    compact = code.replace(" ", "")
    return compact if _CODE.fullmatch(compact) else None


def matching_step(secret: str, code: str, unix_seconds: float) -> int | None:
    """The step in [T-1, T+1] whose code equals `code`, latest first; None if none does.

    Every candidate is compared (no early exit) so timing doesn't say which step matched.
    """
    normalized = normalize_code(code)
    if normalized is None:
        return None
    now = step_at(unix_seconds)
    found = None
    for step in range(now + DRIFT_STEPS, now - DRIFT_STEPS - 1, -1):
        if hmac.compare_digest(code_for_step(secret, step), normalized) and found is None:
            found = step
    return found
