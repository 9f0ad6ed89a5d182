"""Reading an HTTP body piece by piece: the one loop every request and response body goes through.

aiohttp hands every body-less message one shared empty payload whose `readchunk` answers
`(b"", True)` forever after its first read, so a loop on `iter_chunks` never ends there and,
never awaiting, freezes the event loop (two empty PATCHes froze the server for good). This loop
ends at EOF on every kind of stream and yields to the event loop on every empty piece.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader


async def body_pieces(stream: StreamReader) -> AsyncIterator[bytes]:
    """Each piece as the parser stored it (no joining copies), until the body ends."""
    while True:
        piece, _ = await stream.readchunk()
        if piece:
            yield piece
        elif stream.at_eof():
            return
        else:
            await asyncio.sleep(0)  # the end of a chunk of chunked encoding: no data
