"""A program that acquires a network and machines on it, then is killed (SIGKILL) by itself.

``python network_child.py URL TAG COUNT [IMAGE TEMPLATE]``: acquires a network tagged
TAG and COUNT machines on it (journalled in ``$AIORES_STATE_DIR``), prints their ids
(the network's first) and dies without closing its session. With an IMAGE, ACTIVE
means "the cloud says running" (no SSH: moto).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiores


async def main(argv: list[str]) -> None:
    url, tag, count = argv[0], argv[1], int(argv[2])
    if len(argv) > 3:
        desc = aiores.ComputeDescription(image=argv[3], template=argv[4], tags={tag}, ready=None)
    else:
        desc = aiores.ComputeDescription(template="tiny", tags={tag})
    async with aiores.Session() as session:
        mgr = session.manager(url)
        net = await mgr.acquire(aiores.NetworkDescription(tags={tag}))
        vms = await mgr.acquire_many(desc.replace(network=net), count)
        assert session.journal is not None
        await session.journal.flush()
        print(net.id, *(vm.id for vm in vms), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
