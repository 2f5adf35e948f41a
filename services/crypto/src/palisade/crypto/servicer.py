"""Thin gRPC adapter: proto messages in and out of CryptoService. Only services may call, and
only about their own data (the associated data's first part names the calling service)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.common.caller import require_service_caller
from palisade.common.errors import InvalidArgument
from palisade.crypto.data_consumers import DataConsumers
from palisade.crypto.index_consumers import IndexConsumers
from palisade.crypto.normalize import Normalization
from palisade.crypto.service import CryptoService, IndexRequest, IndexToken, KeyVersionInfo
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

_NORMALIZATIONS = {
    pb.NORMALIZATION_EXACT: Normalization.EXACT,
    pb.NORMALIZATION_EMAIL: Normalization.EMAIL,
    pb.NORMALIZATION_PHONE: Normalization.PHONE,
    pb.NORMALIZATION_CASEFOLD: Normalization.CASEFOLD,
}


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(
        self,
        service: CryptoService,
        consumers: IndexConsumers | None = None,
        data_consumers: DataConsumers | None = None,
    ) -> None:
        self._service = service
        self._consumers = consumers  # who asks for blind indexes (see index_consumers.py)
        self._data_consumers = data_consumers  # data-version reports (see data_consumers.py)

    async def Encrypt(self, request: pb.EncryptRequest, context: Context) -> pb.EncryptResponse:
        caller = require_service_caller()
        items = [(i.plaintext, i.associated_data) for i in request.items]
        self._service.check_owner("encrypt", caller.issuer, [aad for _, aad in items])
        # Blind indexes asked for with the envelopes (one round trip per write): checked and
        # computed first, so a bad index item fails the call before any encryption is counted.
        index_results: list[list[IndexToken]] = []
        if request.index_items:
            index_results = await self._blind_index(
                caller.issuer, request.index_items, all_versions=False
            )
        # Any service may name any subject: a person's data is spread over services, and
        # one shred must reach all of it.
        subjects = [i.subject for i in request.items]
        ciphertexts, version = await self._service.encrypt(
            items, subjects if any(subjects) else None
        )
        return pb.EncryptResponse(
            ciphertexts=ciphertexts, key_version=version, index_results=_results(index_results)
        )

    async def Decrypt(self, request: pb.DecryptRequest, context: Context) -> pb.DecryptResponse:
        caller = require_service_caller()
        items = [(i.ciphertext, i.associated_data) for i in request.items]
        self._service.check_owner("decrypt", caller.issuer, [aad for _, aad in items])
        if not request.tolerate_erased:
            return pb.DecryptResponse(plaintexts=await self._service.decrypt(items))
        plaintexts, erased = await self._service.decrypt_tolerating_erased(items)
        return pb.DecryptResponse(plaintexts=plaintexts, erased=erased)

    async def Rewrap(self, request: pb.RewrapRequest, context: Context) -> pb.RewrapResponse:
        caller = require_service_caller()
        items = [(i.ciphertext, i.associated_data) for i in request.items]
        self._service.check_owner("rewrap", caller.issuer, [aad for _, aad in items])
        ciphertexts, rewrapped, version = await self._service.rewrap(items)
        return pb.RewrapResponse(ciphertexts=ciphertexts, rewrapped=rewrapped, key_version=version)

    async def BlindIndex(
        self, request: pb.BlindIndexRequest, context: Context
    ) -> pb.BlindIndexResponse:
        caller = require_service_caller()
        results = await self._blind_index(
            caller.issuer, request.items, all_versions=request.all_versions
        )
        return pb.BlindIndexResponse(results=_results(results))

    async def _blind_index(
        self, issuer: str, items: Sequence[pb.BlindIndexItem], *, all_versions: bool
    ) -> list[list[IndexToken]]:
        """BlindIndex's checks and tokens, for BlindIndex and Encrypt's index items alike."""
        requests = []
        for index, item in enumerate(items):
            normalization = _NORMALIZATIONS.get(item.normalization)
            if normalization is None:
                raise InvalidArgument(f"item {index}: normalization is required")
            requests.append(IndexRequest(item.value, normalization, item.context))
        self._service.check_owner("blind_index", issuer, [r.context for r in requests])
        results = self._service.blind_index(requests, all_versions=all_versions)
        if self._consumers is not None:
            await self._consumers.seen(issuer)  # on record before it has a token
        return results

    async def KeyStatus(
        self, request: pb.KeyStatusRequest, context: Context
    ) -> pb.KeyStatusResponse:
        require_service_caller()
        status = self._service.status()
        return pb.KeyStatusResponse(
            data_keys=[_version_status(k) for k in status.data_keys],
            index_keys=[_version_status(k) for k in status.index_keys],
            min_data_version=status.min_data_version,
            min_index_version=status.min_index_version,
            warn_threshold=status.warn_threshold,
            rotate_threshold=status.rotate_threshold,
        )

    async def ReportIndexVersions(
        self, request: pb.ReportIndexVersionsRequest, context: Context
    ) -> pb.ReportIndexVersionsResponse:
        caller = require_service_caller()
        if self._consumers is None:
            raise InvalidArgument("this server keeps no index-consumer records")
        await self._consumers.report(caller.issuer, list(request.versions_in_use))
        return pb.ReportIndexVersionsResponse()

    async def ReportDataVersions(
        self, request: pb.ReportDataVersionsRequest, context: Context
    ) -> pb.ReportDataVersionsResponse:
        caller = require_service_caller()
        if self._data_consumers is None:
            raise InvalidArgument("this server keeps no data-version reports")
        await self._data_consumers.report(caller.issuer, list(request.versions_in_use))
        return pb.ReportDataVersionsResponse()

    async def ShredSubject(
        self, request: pb.ShredSubjectRequest, context: Context
    ) -> pb.ShredSubjectResponse:
        # Services only (the assertion's edge to crypto is checked by the interceptors); who
        # asked is in the log line the shred writes.
        caller = require_service_caller()
        shredded = await self._service.shred_subject(request.subject, actor=caller.issuer)
        return pb.ShredSubjectResponse(shredded=shredded)


def _results(results: list[list[IndexToken]]) -> list[pb.BlindIndexResult]:
    return [
        pb.BlindIndexResult(
            tokens=[pb.IndexToken(key_version=t.key_version, token=t.token) for t in r]
        )
        for r in results
    ]


def _version_status(info: KeyVersionInfo) -> pb.KeyVersionStatus:
    created = Timestamp()
    created.FromDatetime(info.created_at)
    return pb.KeyVersionStatus(
        version=info.version,
        primary=info.primary,
        retired=info.retired,
        encryptions=info.encryptions,
        created_at=created,
    )
