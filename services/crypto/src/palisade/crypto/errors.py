"""The crypto service's exceptions; each has its own status code and a message without secrets."""

from __future__ import annotations

import grpc

from palisade.common.errors import InvalidArgument, NotFound, PalisadeError, PermissionDenied


class UnknownKeyVersion(NotFound):
    code = "unknown_key_version"
    default_message = "ciphertext names a key version this keyring does not have"


class RetiredKeyVersion(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "retired_key_version"
    default_message = "ciphertext was made under a retired key version"


class MalformedCiphertext(InvalidArgument):
    code = "malformed_ciphertext"
    default_message = "not a Palisade ciphertext envelope"


class TamperedCiphertext(PalisadeError):
    status = grpc.StatusCode.DATA_LOSS
    code = "ciphertext_tampered"
    default_message = "ciphertext failed authentication (tampered, or wrong associated data)"


class MissingAssociatedData(InvalidArgument):
    code = "missing_associated_data"
    default_message = "every item needs associated data binding it to its record and field"


class ForeignAssociatedData(PermissionDenied):
    code = "associated_data_not_yours"
    default_message = "associated data must name the calling service as its first part"


class BatchTooLarge(PalisadeError):
    status = grpc.StatusCode.OUT_OF_RANGE
    code = "batch_too_large"
    default_message = "batch exceeds the item or byte limit"


class InvalidValue(InvalidArgument):
    code = "invalid_value"
    default_message = "value cannot be normalized"


class KeyUsageExhausted(PalisadeError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "key_usage_exhausted"
    default_message = "the primary key reached its encryption limit and could not be rotated"


class SubjectErased(PalisadeError):
    """The subject's secret was destroyed (ShredSubject): its data can never be read again.

    Callers rely on the code: palisade.common.crypto_client raises its SubjectErased for it."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "subject_erased"
    default_message = "the data subject has been erased"


class InvalidSubject(InvalidArgument):
    code = "invalid_subject"
    default_message = (
        'a subject is "user:", "visitor:" or "apikey:" followed by an id of letters, digits, '
        '"_" or "-" (at most 128 characters in all)'
    )


class SubjectNotOwned(PermissionDenied):
    # Shredding is irreversible and the owning service's decision (after its own checks), so a
    # subject's kind names the one service that may shred it.
    code = "subject_not_owned"
    default_message = "only the service that owns a subject's kind may shred it"


class UnknownSubjectKey(NotFound):
    code = "unknown_subject_key"
    default_message = "ciphertext names a subject key this service does not have"


class KeyringInvalid(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "keyring_invalid"
    default_message = "the keyring file is missing or invalid"


def at_item(error: PalisadeError, index: int) -> PalisadeError:
    """The same error, naming which item of a batch failed (an index, never its content)."""
    return type(error)(f"item {index}: {error.message}")
