"""A Lua script called by its SHA-1 (EVALSHA), loaded again when Redis has forgotten it.

A restarted or flushed Redis answers NOSCRIPT: the script is loaded once (concurrent callers
share the SCRIPT LOAD) and the call sent again. Every call stays its own EVALSHA, executed
atomically on the server; calls issued together travel in one write (resp_client.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from palisade.gateway.rate_limit.resp_client import (
    Reply,
    ReplyError,
    RespClient,
    encode,
    retrieve_exception,
)


class RedisScript:
    def __init__(self, client: RespClient, source: str) -> None:
        self._client = client
        self._source = source
        # What the server names the script by (SHA-1 of its text, as SCRIPT LOAD answers).
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()
        self._loading: asyncio.Task[None] | None = None

    async def call(self, keys: Sequence[str], args: Sequence[int]) -> Reply:
        """The script's reply (raises ReplyError, or OSError when Redis cannot be reached)."""
        command = encode(b"EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._client.execute(command)
        except ReplyError as error:
            if error.code != "NOSCRIPT":
                raise
        await self._load()
        return await self._client.execute(command)

    async def _load(self) -> None:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._send_load())
            # Its callers may all have given up (shield): its failure is still seen.
            self._loading.add_done_callback(retrieve_exception)
        await asyncio.shield(self._loading)

    async def _send_load(self) -> None:
        sha = await self._client.execute(encode(b"SCRIPT", b"LOAD", self._source))
        if sha != self._sha:
            raise ReplyError("ERR SCRIPT LOAD named the script differently")
