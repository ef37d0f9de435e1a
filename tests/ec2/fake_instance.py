"""What cloud-init would make of an aiores instance: an SSH server at its address.

moto boots nothing. To check the whole chain (host key injected in the user data,
published, pinned; the managed key authorized; the login user), a test reads an
instance's user data back from moto, as cloud-init would, and serves SSH on the
instance's (loopback: see aiores_ec2.testing) public address, port 22, with the host
key found there and the managed key authorized, running commands as local processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

__all__ = ["serve_instance"]

_READ = 65536


async def _handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    proc = await asyncio.create_subprocess_shell(
        process.command or "true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        try:
            while data := await process.stdin.read(_READ):
                stdin.write(data)
                await stdin.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            pass
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionError):
                stdin.close()

    async def drain(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
        while data := await src.read(_READ):
            with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
                dst.write(data)
                await dst.drain()

    feeder = asyncio.ensure_future(feed())
    try:
        await asyncio.gather(drain(proc.stdout, process.stdout), drain(proc.stderr, process.stderr))
        status = await proc.wait()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    process.exit(status if status >= 0 else 255)


async def serve_instance(
    address: str, config: dict[str, Any], authorized: str, *, host_key: str | None = None
) -> asyncssh.SSHAcceptor:
    """Serve SSH at ``address``:22 as cloud-init would set it up from ``config``.

    ``host_key`` (a private key text) replaces the injected one: an impostor.
    """
    key = asyncssh.import_private_key(host_key or config["ssh_keys"]["ed25519_private"])
    return await asyncssh.listen(
        address,
        22,
        server_host_keys=[key],
        authorized_client_keys=asyncssh.import_authorized_keys(authorized),
        process_factory=_handle,
        encoding=None,
        reuse_address=True,
    )
