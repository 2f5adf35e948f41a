"""Page tokens that cannot be forged or carried elsewhere (shared by every service that pages).

A token holds the position (a moment and a storage id, int or string) of the last row a page
showed, and an HMAC-SHA256 over it and the token's scope: the method, the caller, the workspace
and the filters it was issued for. A token changed by hand, made up, or presented by another
caller, in another workspace or with other filters fails the MAC and is refused with the
service's own invalid_page_token error, which the caller injects (common knows no service's
errors). The key lives in a file beside the signing keys (every replica shares it), never in
the database. Audit, visitors, chats and webhooks all page with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from palisade.common.secret_files import InsecureSecretPath, check_secret_file, create_exclusive

_VERSION = "p1"
_FORMAT = 1
_KEY_BYTES = 32
_MAX_TOKEN_CHARS = 240
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Position = int | str


class PageTokenKeyInvalid(Exception):
    """The page-token key file is missing, unsafe or malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def scope(*parts: str) -> bytes:
    """What a token is bound to, encoded unambiguously (each part length-prefixed)."""
    return b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)


class PageTokens:
    """Issues and reads signed page tokens; `invalid` builds the error a bad token raises."""

    def __init__(self, key: bytes, *, invalid: Callable[[], Exception]) -> None:
        if len(key) != _KEY_BYTES:
            raise PageTokenKeyInvalid("the page-token key must be 32 bytes")
        self._key = key
        self._invalid = invalid

    def _mac(self, bound: bytes, payload: str) -> str:
        digest = hmac.new(self._key, bound + b"\x00" + payload.encode(), hashlib.sha256).digest()
        return _b64(digest)

    def issue(self, bound: bytes, moment: datetime, position: Position) -> str:
        micros = (moment - _EPOCH) // timedelta(microseconds=1)
        payload = _b64(json.dumps([micros, position], separators=(",", ":")).encode())
        return f"{_VERSION}.{payload}.{self._mac(bound, payload)}"

    def read(self, token: str, bound: bytes) -> tuple[datetime, Position]:
        """The position a token holds; the injected error unless it was issued for bound."""
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise self._invalid()
        parts: Sequence[str] = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise self._invalid()
        _, payload, mac = parts
        if not hmac.compare_digest(self._mac(bound, payload), mac):
            raise self._invalid()
        try:
            micros, position = json.loads(_unb64(payload))
        except (binascii.Error, ValueError, TypeError):
            raise self._invalid() from None
        if not isinstance(micros, int) or isinstance(micros, bool):
            raise self._invalid()
        if not isinstance(position, int | str) or isinstance(position, bool):
            raise self._invalid()
        try:
            return _EPOCH + timedelta(microseconds=micros), position
        except OverflowError:
            raise self._invalid() from None

    def read_int(self, token: str, bound: bytes) -> tuple[datetime, int]:
        moment, position = self.read(token, bound)
        if not isinstance(position, int):
            raise self._invalid()
        return moment, position

    def read_str(self, token: str, bound: bytes) -> tuple[datetime, str]:
        moment, position = self.read(token, bound)
        if not isinstance(position, str):
            raise self._invalid()
        return moment, position


def load_page_token_key(path: Path, *, create: bool) -> bytes:
    """The key in path (created 0600 first when create and it is missing)."""
    if create:
        body = {
            "format": _FORMAT,
            "key": base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode(),
        }
        create_exclusive(path, json.dumps(body).encode())
    try:
        check_secret_file(path)
        body = json.loads(path.read_bytes())
        if body.get("format") != _FORMAT:
            raise PageTokenKeyInvalid("the page-token key file has an unknown format")
        key = base64.b64decode(body["key"], validate=True)
    except FileNotFoundError:
        raise PageTokenKeyInvalid(f"no page-token key file at {path}") from None
    except InsecureSecretPath as exc:
        raise PageTokenKeyInvalid(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise PageTokenKeyInvalid(f"the page-token key file at {path} is malformed") from None
    if len(key) != _KEY_BYTES:
        raise PageTokenKeyInvalid("the page-token key must be 32 bytes")
    return key
