"""The typed client every service uses to reach the crypto service.

Transport failures become Unavailable (the gateway answers 503), so a caller that cannot
encrypt never falls back to writing plaintext. Data of an erased (crypto-shredded) subject
raises SubjectErased, unless the caller asked to tolerate it (then those items come back None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, cast, overload

import grpc

from palisade.common.decrypt_batches import DecryptBatches
from palisade.common.errors import (
    ERROR_CODE_METADATA_KEY,
    InvalidArgument,
    PalisadeError,
    Unavailable,
)
from palisade.common.errors import SubjectErased as SubjectErased  # where callers import it
from palisade.common.grpc_client import ServiceIdentity
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

_SERVICE = "/" + pb.DESCRIPTOR.services_by_name["CryptoService"].full_name + "/"
_ENCRYPT, _DECRYPT, _BLIND_INDEX = (_SERVICE + m for m in ("Encrypt", "Decrypt", "BlindIndex"))
_REPORT_INDEX_VERSIONS = _SERVICE + "ReportIndexVersions"
_REPORT_DATA_VERSIONS = _SERVICE + "ReportDataVersions"
_SHRED_SUBJECT = _SERVICE + "ShredSubject"
_REWRAP, _KEY_STATUS = _SERVICE + "Rewrap", _SERVICE + "KeyStatus"

# (plaintext, associated data), or with the data subject it belongs to ("user:usr_…").
EncryptInput = tuple[bytes, bytes] | tuple[bytes, bytes, str]

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Normalization(IntEnum):
    EXACT = pb.NORMALIZATION_EXACT
    EMAIL = pb.NORMALIZATION_EMAIL
    PHONE = pb.NORMALIZATION_PHONE
    CASEFOLD = pb.NORMALIZATION_CASEFOLD


@dataclass(frozen=True)
class IndexInput:
    """A value to blind-index in the same Encrypt call (see CryptoClient.encrypt_indexed)."""

    value: str
    normalization: Normalization
    context: bytes


@dataclass(frozen=True)
class IndexedEncryption:
    ciphertexts: list[bytes]
    key_version: int  # the data key version every envelope is under
    index_tokens: list[tuple[int, str]]  # (index key version, token), one per IndexInput


@dataclass(frozen=True)
class Rewrapped:
    ciphertexts: list[bytes]
    moved: list[bool]
    key_version: int


@dataclass(frozen=True)
class KeyVersions:
    primary_data: int
    min_data: int
    primary_index: int
    min_index: int


class CryptoFailure(PalisadeError):
    """The crypto service refused stored data (e.g. tampered ciphertext): an integrity fault."""

    code = "internal"
    default_message = "stored data failed an integrity check"


def _error_code(error: grpc.aio.AioRpcError) -> str | None:
    pairs: Any = error.trailing_metadata() or ()  # grpc-stubs types it as one entry
    for key, value in pairs:
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            return value
    return None


def _translate(error: grpc.aio.AioRpcError) -> PalisadeError:
    if error.code() in _UNAVAILABLE:
        return Unavailable("the crypto service is unavailable")
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(error.details() or "invalid value")
    if _error_code(error) == SubjectErased.code:
        return SubjectErased(error.details() or None)  # names the item: "item 3: …"
    return CryptoFailure()


class CryptoClient:
    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        identity: ServiceIdentity,
        timeout: float = 5.0,
        batch_decrypts: bool = False,
    ) -> None:
        """batch_decrypts: concurrent decrypt() calls (those not tolerating erased subjects)
        share Decrypt RPCs (palisade.common.decrypt_batches), for a service whose hot reads
        each decrypt a few fields."""
        self._stub = crypto_pb2_grpc.CryptoServiceStub(channel)
        self._identity = identity
        self._timeout = timeout
        self.decrypt_batches = DecryptBatches(self._decrypt_tolerant) if batch_decrypts else None

    async def encrypt(self, items: Sequence[EncryptInput], *, subject: str = "") -> list[bytes]:
        """Envelopes for (plaintext, associated data) pairs, in order.

        `subject` puts every item under that data subject's key ("user:usr_…",
        "visitor:vis_…", "apikey:…"); an item given as (plaintext, associated data, subject)
        names its own instead. After ShredSubject, a subject's envelopes can never be opened
        again, and encrypting for it raises SubjectErased.
        """
        if not items:
            return []
        request = pb.EncryptRequest()
        # Items added in place: building each EncryptItem apart and passing the list copies
        # every one again (twice the CPU for a batch of a thousand, as audit's ingest sends).
        add = request.items.add
        for item in items:
            add(
                plaintext=item[0],
                associated_data=item[1],
                subject=item[2] if len(item) == 3 else subject,
            )
        try:
            reply = await self._stub.Encrypt(
                request, metadata=self._identity.metadata("crypto", _ENCRYPT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return list(reply.ciphertexts)

    async def encrypt_indexed(
        self, items: Sequence[EncryptInput], index: Sequence[IndexInput], *, subject: str = ""
    ) -> IndexedEncryption:
        """encrypt() and the primary-version blind-index tokens of `index`, in one round trip
        (a write that stores both makes one call). All or nothing."""
        request = pb.EncryptRequest(
            items=[
                pb.EncryptItem(
                    plaintext=item[0],
                    associated_data=item[1],
                    subject=item[2] if len(item) == 3 else subject,
                )
                for item in items
            ],
            index_items=[_index_item(i.value, i.normalization, i.context) for i in index],
        )
        try:
            reply = await self._stub.Encrypt(
                request, metadata=self._identity.metadata("crypto", _ENCRYPT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        tokens = [(r.tokens[0].key_version, r.tokens[0].token) for r in reply.index_results]
        if len(tokens) != len(index) or len(reply.ciphertexts) != len(items):
            raise CryptoFailure()  # a crypto that does not know index items
        return IndexedEncryption(list(reply.ciphertexts), reply.key_version, tokens)

    async def rewrap(self, items: Sequence[tuple[bytes, bytes]]) -> Rewrapped:
        """Envelopes moved under the primary data key (the plaintext never leaves crypto)."""
        request = pb.RewrapRequest(
            items=[pb.DecryptItem(ciphertext=c, associated_data=a) for c, a in items]
        )
        try:
            reply = await self._stub.Rewrap(
                request, metadata=self._identity.metadata("crypto", _REWRAP), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return Rewrapped(list(reply.ciphertexts), list(reply.rewrapped), reply.key_version)

    async def key_versions(self) -> KeyVersions:
        """The primary and lowest usable data and index key versions (no key material)."""
        try:
            reply = await self._stub.KeyStatus(
                pb.KeyStatusRequest(),
                metadata=self._identity.metadata("crypto", _KEY_STATUS),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        data = [k.version for k in reply.data_keys if k.primary]
        index = [k.version for k in reply.index_keys if k.primary]
        if not data or not index:
            raise CryptoFailure()
        return KeyVersions(data[0], reply.min_data_version, index[0], reply.min_index_version)

    @overload
    async def decrypt(
        self, items: Sequence[tuple[bytes, bytes]], *, tolerate_erased: Literal[False] = False
    ) -> list[bytes]: ...

    @overload
    async def decrypt(
        self, items: Sequence[tuple[bytes, bytes]], *, tolerate_erased: Literal[True]
    ) -> list[bytes | None]: ...

    async def decrypt(
        self, items: Sequence[tuple[bytes, bytes]], *, tolerate_erased: bool = False
    ) -> list[bytes] | list[bytes | None]:
        """Plaintexts for (envelope, associated data) pairs, in order.

        An item of an erased subject raises SubjectErased for the whole batch; with
        tolerate_erased=True it comes back as None instead (for readers of mixed rows, such
        as the security log), and every other item is decrypted.
        """
        if not items:
            return []
        if not tolerate_erased:
            if self.decrypt_batches is not None:
                return await self.decrypt_batches.decrypt(items)
            return await self._decrypt_strict(items)
        return await self._decrypt_tolerant(items)

    async def _decrypt_strict(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        reply = await self._decrypt_call(items, tolerate_erased=False)
        if len(reply.plaintexts) != len(items):
            raise CryptoFailure()
        return list(reply.plaintexts)

    async def _decrypt_tolerant(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        reply = await self._decrypt_call(items, tolerate_erased=True)
        erased = list(reply.erased)
        if len(erased) != len(reply.plaintexts):  # a crypto that ignored the flag
            raise CryptoFailure()
        return [None if gone else p for p, gone in zip(reply.plaintexts, erased, strict=True)]

    async def _decrypt_call(
        self, items: Sequence[tuple[bytes, bytes]], *, tolerate_erased: bool
    ) -> pb.DecryptResponse:
        request = pb.DecryptRequest(
            items=[pb.DecryptItem(ciphertext=c, associated_data=a) for c, a in items],
            tolerate_erased=tolerate_erased,
        )
        try:
            reply = await self._stub.Decrypt(
                request, metadata=self._identity.metadata("crypto", _DECRYPT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return reply

    async def shred_subject(self, subject: str) -> bool:
        """Destroys the subject's key: every envelope made for it, wherever it was copied,
        raises SubjectErased (or is None when tolerated) from now on, and so does encrypting
        for it. Idempotent: False if it had already been shredded."""
        try:
            reply = await self._stub.ShredSubject(
                pb.ShredSubjectRequest(subject=subject),
                metadata=self._identity.metadata("crypto", _SHRED_SUBJECT),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return bool(reply.shredded)

    async def blind_index(
        self,
        value: str,
        normalization: Normalization,
        context: bytes,
        *,
        all_versions: bool = False,
    ) -> list[str]:
        """Index tokens for one value: [primary] or every usable version, primary first."""
        [tokens] = await self.blind_index_many(
            [value], normalization, context, all_versions=all_versions
        )
        return tokens

    async def blind_index_many(
        self,
        values: Sequence[str],
        normalization: Normalization,
        context: bytes,
        *,
        all_versions: bool = False,
    ) -> list[list[str]]:
        """blind_index() for several values in one call, in order."""
        if not values:
            return []
        request = pb.BlindIndexRequest(
            items=[_index_item(value, normalization, context) for value in values],
            all_versions=all_versions,
        )
        try:
            reply = await self._stub.BlindIndex(
                request,
                metadata=self._identity.metadata("crypto", _BLIND_INDEX),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return [[t.token for t in result.tokens] for result in reply.results]

    async def index_tokens(self, index: Sequence[IndexInput]) -> list[tuple[int, str]]:
        """Primary-version tokens of values with contexts of their own, in one call: (index key
        version, token) per input (a reindex recomputes many rows' tokens at once)."""
        if not index:
            return []
        request = pb.BlindIndexRequest(
            items=[_index_item(i.value, i.normalization, i.context) for i in index]
        )
        try:
            reply = await self._stub.BlindIndex(
                request,
                metadata=self._identity.metadata("crypto", _BLIND_INDEX),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return [(r.tokens[0].key_version, r.tokens[0].token) for r in reply.results]

    async def report_index_versions(self, versions_in_use: Sequence[int]) -> None:
        """Tells crypto which index key versions this service's stored rows still use."""
        request = pb.ReportIndexVersionsRequest(versions_in_use=sorted(set(versions_in_use)))
        try:
            await self._stub.ReportIndexVersions(
                request,
                metadata=self._identity.metadata("crypto", _REPORT_INDEX_VERSIONS),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None

    async def report_data_versions(self, versions_in_use: Sequence[int]) -> None:
        """Tells crypto which data key versions this service's stored envelopes still use
        (`palisade-crypto keys retire --below N` refuses while one is below N)."""
        request = pb.ReportDataVersionsRequest(versions_in_use=sorted(set(versions_in_use)))
        try:
            await self._stub.ReportDataVersions(
                request,
                metadata=self._identity.metadata("crypto", _REPORT_DATA_VERSIONS),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None


def _index_item(value: str, normalization: Normalization, context: bytes) -> pb.BlindIndexItem:
    return pb.BlindIndexItem(
        value=value,
        normalization=cast("pb.Normalization.ValueType", int(normalization)),
        context=context,
    )
