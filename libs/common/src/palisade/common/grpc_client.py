"""Calling another Palisade service: channels and the per-call signed caller assertion."""

from __future__ import annotations

import uuid

import grpc

from palisade.common.caller import CALLER_METADATA_KEY, REQUEST_ID_METADATA_KEY, AssertionSigner
from palisade.common.grpc_server import CHANNEL_OPTIONS
from palisade.common.logs import request_id_var

Metadata = tuple[tuple[str, str], ...]


# Internal channels never go through a proxy named in the environment (grpc_proxy, https_proxy,
# http_proxy): those are for the outside world (say, an egress proxy a deployment sets), and a
# proxy would see every caller assertion and could send the call anywhere. gRPC honours them
# unless this channel argument turns proxying off (no_proxy cannot name IP ranges).
_CLIENT_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_http_proxy", 0)]

# gRPC's default reconnect backoff grows to 2 minutes: after a long outage of the peer, a
# relay's channel would sit out that long after the peer is back. Ours stays within seconds.
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A channel inside the cluster (mTLS, where used, is the mesh's job, not ours)."""
    return grpc.aio.insecure_channel(target, options=_CLIENT_OPTIONS)


def relay_channel(target: str) -> grpc.aio.Channel:
    """insecure_channel for a background relay that waits out its peer's outages: it
    connects lazily (the service starts before the peer is up) and reconnects quickly."""
    return grpc.aio.insecure_channel(target, options=[*_CLIENT_OPTIONS, *_RECONNECT_OPTIONS])


class ServiceIdentity:
    """This service calling a peer as itself ("service:<name>"), propagating the request id."""

    def __init__(self, *, name: str, signer: AssertionSigner) -> None:
        self._service = name
        self._principal = f"service:{name}"
        self._signer = signer

    @property
    def service(self) -> str:
        return self._service

    def metadata(self, audience: str, method: str) -> Metadata:
        """Metadata for one call attempt of `method` ("/pkg.Service/Method") on `audience`.

        Mint it per attempt: each assertion carries a fresh id that the callee accepts once,
        and is bound to that method. (gRPC's own transparent retries re-send it only for
        attempts the server never processed, so they do not trip the replay check.)
        """
        request_id = request_id_var.get() or uuid.uuid4().hex
        assertion = self._signer.sign(
            audience=audience, method=method, principal=self._principal, request_id=request_id
        )
        return ((CALLER_METADATA_KEY, assertion), (REQUEST_ID_METADATA_KEY, request_id))
