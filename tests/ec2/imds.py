"""A small IMDSv2 metadata service on loopback: the spot interruption notice path.

As EC2's (for the two paths aiores reads): ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` gives a token (400 without that header);
``GET /latest/meta-data/spot/instance-action`` answers 401 without a valid
``X-aws-ec2-metadata-token``, 404 while there is no notice, then the notice's JSON.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from aiohttp import web

__all__ = ["Imds"]

TOKEN_TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


class Imds:
    """The metadata service; ``async with Imds() as imds: imds.url``."""

    def __init__(self) -> None:
        self.notice: dict[str, Any] | None = None
        #: Seconds the notice path waits before answering (a read in flight).
        self.delay = 0.0
        self.tokens: set[str] = set()
        self.reads = 0
        self.unauthorized = 0
        self.answered: list[int] = []
        self.in_flight = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Imds:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/meta-data/spot/instance-action", self._action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _note(self, status: int) -> None:
        async with self._changed:
            self.answered.append(status)
            self._changed.notify_all()

    async def wait_for(self, count: int, status: int | None = None) -> None:
        """Until ``count`` answers (of ``status``, if given) were given in all."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: sum(1 for s in self.answered if status in (None, s)) >= count
            )

    async def wait_in_flight(self) -> None:
        """Until a read of the notice path is under way."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight > 0)

    async def _token(self, request: web.Request) -> web.Response:
        if TOKEN_TTL not in request.headers:
            return web.Response(status=400, text="missing the TTL header")
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        return web.Response(text=token)

    async def _action(self, request: web.Request) -> web.Response:
        if request.headers.get(TOKEN) not in self.tokens:
            self.unauthorized += 1
            await self._note(401)
            return web.Response(status=401, text="Unauthorized")
        self.reads += 1
        self.in_flight += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.notice is None:
            await self._note(404)
            return web.Response(status=404, text="Not Found")
        await self._note(200)
        return web.Response(text=json.dumps(self.notice), content_type="text/plain")
