"""A streamed response that closes its body generator as soon as the response ends, however it ends."""
from __future__ import annotations

import anyio
from starlette.responses import StreamingResponse


class ClosingStreamingResponse(StreamingResponse):
    """When the client goes away, Starlette stops iterating but leaves the body generator suspended at its
    `yield`, so the generator's `finally` would wait for garbage collection (on an idle server, minutes): the
    server's dropped stream would keep its row decoding and its audit line unwritten, the arena's chat its
    model lock. Here the generator is closed when the response ends."""

    def __init__(self, content, **kwargs):
        super().__init__(content, **kwargs)
        self.content = content

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if hasattr(self.content, "aclose"):
                await self.content.aclose()
            else:
                # A plain generator: Starlette read it in worker threads, none still running by now; closing it
                # may wait on a thread (the arena's model), hence a thread here too.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.content.close)
