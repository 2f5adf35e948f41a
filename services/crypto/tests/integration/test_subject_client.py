"""palisade.common.crypto_client against the real crypto service: the typed SubjectErased and
the erased items of a tolerant read come from what crypto actually answers."""

from __future__ import annotations

import pytest

from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.errors import InvalidArgument
from palisade.common.grpc_client import ServiceIdentity, insecure_channel

pytestmark = pytest.mark.postgres

ADA = "visitor:vis_0123456789abcdef0123456789abcdef"  # visitors owns (may shred) visitor:


def _aad(field: str) -> bytes:
    return associated_data("visitors", "ws_1", "v_1", field)


async def test_client_round_trip_shred_and_erased_reads(crypto) -> None:
    identity = ServiceIdentity(name="visitors", signer=crypto.signer("visitors"))
    async with insecure_channel(crypto.server.running.target) as channel:
        client = CryptoClient(channel=channel, identity=identity)
        name, email, note = await client.encrypt(
            [(b"Ada", _aad("name")), (b"ada@example.com", _aad("email")), (b"n", _aad("note"), "")],
            subject=ADA,
        )
        assert (name[0], email[0], note[0]) == (2, 2, 1)
        items = [(name, _aad("name")), (email, _aad("email")), (note, _aad("note"))]
        assert await client.decrypt(items) == [b"Ada", b"ada@example.com", b"n"]

        assert await client.shred_subject(ADA) is True
        assert await client.shred_subject(ADA) is False
        with pytest.raises(SubjectErased) as caught:
            await client.decrypt(items)
        assert caught.value.message.startswith("item 0: ")
        assert await client.decrypt(items, tolerate_erased=True) == [None, None, b"n"]
        with pytest.raises(SubjectErased):
            await client.encrypt([(b"again", _aad("name"))], subject=ADA)
        with pytest.raises(InvalidArgument):
            await client.encrypt([(b"x", _aad("name"))], subject="user:not valid")
