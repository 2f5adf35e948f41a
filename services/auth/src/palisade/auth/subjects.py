"""Whose key auth's ciphertexts are sealed under: every value about a person, under theirs.

Since issue 13 the crypto service derives a per-subject key for items that name a data subject
(docs/security-model.md, Crypto-shredding). Auth seals everything it stores about a user (the
email and name in their row, a TOTP secret, backup codes, the new address of an email change,
the queued emails addressed to them) under the subject `user:<user id>`, with the same
associated data as before. Deleting the account shreds that subject (accounts/deletion.py):
every copy of those ciphertexts, in any backup or outbox, fails with subject_erased from then
on. Rows sealed before this (envelope format 1, no subject) keep decrypting and are moved
under the subject by `palisade-auth subjects migrate` (accounts/subject_migration.py).
"""

from __future__ import annotations

# The envelope's first byte is its format (crypto's envelope.py; documented, and part of the
# authenticated header): 1 = the keyring's data key, 2 = a subject's derived key.
SUBJECT_ENVELOPE_FORMAT = 2
NO_SUBJECT_ENVELOPE_FORMAT = 1

# Decoy emails (sealed where none is sent, so a known and an unknown address cost the same,
# mail/templates.py seal_or_decoy) are sealed under this subject, so that crypto does the same
# work for them as for a real person's: a subject read and a derived key. No account can have
# this id (auth mints ids from uuid4, whose version digit is never 0).
DECOY_USER_ID = "usr_" + "0" * 32


def user_subject(user_id: str) -> str:
    """The data subject of everything auth stores about this user."""
    return f"user:{user_id}"


def under_subject(ciphertext: bytes) -> bool:
    """Whether an envelope is sealed under a subject's key (format 2)."""
    return ciphertext[:1] == bytes([SUBJECT_ENVELOPE_FORMAT])
