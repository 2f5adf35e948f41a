"""The typed client every service uses to reach the crypto service.

Transport failures become Unavailable (the gateway answers 503), so a caller that cannot
encrypt never falls back to writing plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import cast

import grpc

from palisade.common.errors import InvalidArgument, PalisadeError, Unavailable
from palisade.common.grpc_client import ServiceIdentity
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

_SERVICE = "/" + pb.DESCRIPTOR.services_by_name["CryptoService"].full_name + "/"
_ENCRYPT, _DECRYPT, _BLIND_INDEX = (_SERVICE + m for m in ("Encrypt", "Decrypt", "BlindIndex"))
_REPORT_INDEX_VERSIONS = _SERVICE + "ReportIndexVersions"

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


class CryptoFailure(PalisadeError):
    """The crypto service refused stored data (e.g. tampered ciphertext): an integrity fault."""

    code = "internal"
    default_message = "stored data failed an integrity check"


def _translate(error: grpc.aio.AioRpcError) -> PalisadeError:
    if error.code() in _UNAVAILABLE:
        return Unavailable("the crypto service is unavailable")
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(error.details() or "invalid value")
    return CryptoFailure()


class CryptoClient:
    def __init__(
        self, *, channel: grpc.aio.Channel, identity: ServiceIdentity, timeout: float = 5.0
    ) -> None:
        self._stub = crypto_pb2_grpc.CryptoServiceStub(channel)
        self._identity = identity
        self._timeout = timeout

    async def encrypt(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Envelopes for (plaintext, associated data) pairs, in order."""
        if not items:
            return []
        request = pb.EncryptRequest(
            items=[pb.EncryptItem(plaintext=p, associated_data=a) for p, a in items]
        )
        try:
            reply = await self._stub.Encrypt(
                request, metadata=self._identity.metadata("crypto", _ENCRYPT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return list(reply.ciphertexts)

    async def decrypt(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Plaintexts for (envelope, associated data) pairs, in order."""
        if not items:
            return []
        request = pb.DecryptRequest(
            items=[pb.DecryptItem(ciphertext=c, associated_data=a) for c, a in items]
        )
        try:
            reply = await self._stub.Decrypt(
                request, metadata=self._identity.metadata("crypto", _DECRYPT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return list(reply.plaintexts)

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
            items=[
                pb.BlindIndexItem(
                    value=value,
                    normalization=cast("pb.Normalization.ValueType", int(normalization)),
                    context=context,
                )
                for value in values
            ],
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
