"""Data subjects' keys, for crypto-shredding: destroy one secret, and every ciphertext made for
the subject (wherever it was copied) is unreadable for good.

Each subject ("user:usr_…", "visitor:vis_…", "apikey:key_…") gets, on its first encryption, a
random 32-byte secret and a random 16-byte key id, kept in the crypto database's
`subject_keys` table. Its data key under keyring version v is

    HKDF-SHA256(IKM = data key v, salt = secret,
                info = "palisade-crypto/subject-data-key/v1" | len | subject | key id)

so it needs both the keyring (outside every database) and the secret: a dump of the crypto
database alone opens nothing, and the keyring alone opens no subject's data. The info label
separates these keys from the keyring's own data keys (used directly for format 1 envelopes),
and the subject and key id in it tie each key to one row. Format 2 envelopes name the key id
(authenticated as part of the header), so decryption needs only the ciphertext and its
associated data.

The secret is stored wrapped: a format 1 envelope under a key derived from the primary data key
(`HKDF(data key, info="palisade-crypto/subject-secret-wrap/v1")`, so it never opens through
Decrypt), bound to the subject and key id. Shredding overwrites the wrapped secret with NULL
and keeps the row as a tombstone: later encryptions for the subject are refused
(`subject_erased`) rather than given a new secret, and its ciphertexts answer `subject_erased`
instead of looking tampered.

No secret is cached between requests: a shred must take effect at once on every replica, and
crypto replicas share nothing but this database (no Redis, no invalidation channel). A cache
checked against the database on every request would save only the unwrap (one AES-GCM
operation per subject), not the read, so every batch reads the rows it needs afresh: one
SELECT for all of its subjects, whatever the number of items.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from palisade.common.aad import associated_data
from palisade.common.errors import PalisadeError
from palisade.crypto.envelope import (
    SUBJECT_KEY_ID_BYTES,
    header,
    key_version_of,
    open_envelope,
    seal_with,
)
from palisade.crypto.errors import InvalidSubject, SubjectNotOwned
from palisade.crypto.keyring import KEY_BYTES, KeyVersion, VersionedKeys

log = logging.getLogger("palisade.crypto.subjects")

SECRET_BYTES = 32
MAX_SUBJECT_CHARS = 128
SUBJECT_KINDS = ("user", "visitor", "apikey")
# ASCII only (no look-alikes, one byte per character): a kind, a colon, an id.
_SUBJECT = re.compile(r"(?:user|visitor|apikey):[A-Za-z0-9_-]+", re.ASCII)

_DATA_KEY_INFO = b"palisade-crypto/subject-data-key/v1"
_WRAP_KEY_INFO = b"palisade-crypto/subject-secret-wrap/v1"


def check_subject(subject: str) -> str:
    """The subject, if it is one (kind prefix, id charset, bounded length); else InvalidSubject."""
    if len(subject) > MAX_SUBJECT_CHARS or not _SUBJECT.fullmatch(subject):
        raise InvalidSubject()
    return subject


# Which service may shred each kind of subject (ShredSubject, by the verified caller assertion's
# issuer): auth deletes accounts, visitors erases visitors, apikeys owns its keys' history.
# Encrypt may name any subject (one person's data spread over services must all die with one
# shred); only the shred is reserved. The operator's CLI may shred any subject.
SHREDDER_OF_KIND = {"user": "auth", "visitor": "visitors", "apikey": "apikeys"}


def check_shredder(subject: str, service: str) -> None:
    """SubjectNotOwned unless `service` owns the (well-formed) subject's kind."""
    if SHREDDER_OF_KIND.get(subject_kind(check_subject(subject))) != service:
        raise SubjectNotOwned()


def subject_kind(subject: str) -> str:
    """ "user" for "user:usr_…": what log lines may say about a subject."""
    return subject.partition(":")[0]


@dataclass(frozen=True)
class SubjectRecord:
    """One row of subject_keys. The wrapped secret is None once shredded (a tombstone)."""

    subject: str
    key_id: bytes
    wrapped_secret: bytes | None = field(repr=False)
    wrap_version: int | None
    created_at: datetime
    shredded_at: datetime | None

    @property
    def erased(self) -> bool:
        return self.shredded_at is not None


@dataclass(frozen=True)
class SubjectSecret:
    """A live subject's unwrapped secret (never in a repr, a log line or an error)."""

    subject: str
    key_id: bytes
    secret: bytes = field(repr=False)
    wrap_version: int


@dataclass(frozen=True)
class SubjectDataKey:
    """A subject's AES-256-GCM key under one data-key version, and its envelope header."""

    version: int
    key_id: bytes
    aead: AESGCM = field(repr=False)

    @property
    def head(self) -> bytes:
        return header(self.version, self.key_id)


def _hkdf(ikm: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(ikm)


def subject_data_key(data_key: KeyVersion, secret: SubjectSecret) -> SubjectDataKey:
    subject = secret.subject.encode("ascii")
    info = _DATA_KEY_INFO + struct.pack(">I", len(subject)) + subject + secret.key_id
    raw = _hkdf(data_key.key, salt=secret.secret, info=info)
    return SubjectDataKey(data_key.version, secret.key_id, AESGCM(raw))


@dataclass(frozen=True)
class _WrapKey:
    aead: AESGCM


def _wrap_key(data_key: KeyVersion) -> _WrapKey:
    return _WrapKey(AESGCM(_hkdf(data_key.key, salt=None, info=_WRAP_KEY_INFO)))


def _wrap_aad(subject: str, key_id: bytes) -> bytes:
    return associated_data("crypto", "subject_secret", subject, key_id)


def wrap_secret(data_key: KeyVersion, subject: str, key_id: bytes, secret: bytes) -> bytes:
    [wrapped] = seal_with(
        _wrap_key(data_key), header(data_key.version), [(secret, _wrap_aad(subject, key_id))]
    )
    return wrapped


def unwrap_secret(data_keys: VersionedKeys, record: SubjectRecord) -> SubjectSecret:
    """The live record's secret. Raises the keyring's errors when the wrapping version is
    retired or unknown, and TamperedCiphertext when the row was altered (another subject's
    secret copied in, say)."""
    if record.wrapped_secret is None:
        raise ValueError("a shredded subject has no secret")
    version = key_version_of(record.wrapped_secret)
    key = data_keys.usable(version)
    secret = open_envelope(
        _wrap_key(key), record.wrapped_secret, _wrap_aad(record.subject, record.key_id)
    )
    return SubjectSecret(record.subject, record.key_id, secret, version)


def new_record(primary: KeyVersion, subject: str, now: datetime) -> SubjectRecord:
    """A fresh secret for a subject, wrapped under the primary data key (CSPRNG bytes)."""
    key_id = secrets.token_bytes(SUBJECT_KEY_ID_BYTES)
    secret = secrets.token_bytes(SECRET_BYTES)
    return SubjectRecord(
        subject=subject,
        key_id=key_id,
        wrapped_secret=wrap_secret(primary, subject, key_id, secret),
        wrap_version=primary.version,
        created_at=now,
        shredded_at=None,
    )


def rewrapped(primary: KeyVersion, secret: SubjectSecret) -> bytes:
    """The same secret wrapped under the primary (before an old data-key version is retired)."""
    return wrap_secret(primary, secret.subject, secret.key_id, secret.secret)


class SubjectStore(Protocol):
    """subject_keys, shared by every replica (see subject_store.py)."""

    async def by_subjects(self, subjects: list[str]) -> dict[str, SubjectRecord]: ...

    async def by_key_ids(self, key_ids: list[bytes]) -> dict[bytes, SubjectRecord]: ...

    async def insert_new(self, records: list[SubjectRecord]) -> None:
        """Inserts the records whose subject has no row yet; the others are left as they are
        (a concurrent first encryption won: its row is the one to use)."""
        ...

    async def rewrap(self, key_id: bytes, wrapped_secret: bytes, wrap_version: int) -> bool:
        """Replaces a live row's wrapped secret if it was wrapped under an older version."""
        ...

    async def shred(self, subject: str, tombstone_key_id: bytes, now: datetime) -> ShredOutcome:
        """Destroys the subject's secret (or records a tombstone if it has none)."""
        ...

    async def wrapped_below(self, version: int, *, after: str, limit: int) -> list[SubjectRecord]:
        """Live rows wrapped under versions below `version`, in subject order after `after`."""
        ...


@dataclass(frozen=True)
class ShredOutcome:
    shredded: bool  # False: it already had been
    key_id: bytes  # of the subject's row (a pseudonym: it is in every ciphertext header)


async def shred_subject(store: SubjectStore, subject: str, *, now: datetime, actor: str) -> bool:
    """Shreds a subject (ShredSubject and `palisade-crypto subjects shred` both come here);
    returns False if it already was. Crypto has no security-event outbox: the record is this
    structured log line, which names the subject's kind and key id, never the subject itself
    (its id is the person's, and after erasure only a pseudonym may remain)."""
    check_subject(subject)
    outcome = await store.shred(subject, secrets.token_bytes(SUBJECT_KEY_ID_BYTES), now)
    log.info(
        "subject shredded" if outcome.shredded else "subject already shredded",
        extra={
            "event": "subject.shredded",
            "actor": actor,
            "subject_kind": subject_kind(subject),
            "subject_key_id": outcome.key_id.hex(),
            "newly_shredded": outcome.shredded,
        },
    )
    return outcome.shredded


@dataclass(frozen=True)
class WrapSweep:
    moved: int  # secrets rewrapped under the primary
    unreadable: int  # secrets under versions already unusable: their data is lost already
    remaining: int  # secrets still wrapped below the version afterwards (moved meanwhile)


async def move_secrets_forward(
    store: SubjectStore, data_keys: VersionedKeys, below: int, *, page: int = 500
) -> WrapSweep:
    """Rewraps every live secret wrapped under a version below `below` with the primary, so
    `keys retire --below` strands no subject (their data may be under newer versions). Pages
    through the table in subject order; a row shredded meanwhile stays shredded."""
    primary = data_keys.primary_key
    moved = unreadable = remaining = 0
    for sweep in ("move", "check"):  # the check finds any a stale replica wrapped meanwhile
        after = ""
        while rows := await store.wrapped_below(below, after=after, limit=page):
            for record in rows:
                try:
                    secret = unwrap_secret(data_keys, record)
                except PalisadeError:
                    unreadable += sweep == "move"
                    continue
                if sweep == "check":
                    remaining += 1
                elif await store.rewrap(record.key_id, rewrapped(primary, secret), primary.version):
                    moved += 1
            after = rows[-1].subject
    return WrapSweep(moved, unreadable, remaining)
