"""A program that acquires sim VMs and then sleeps, to be killed in the middle.

``python acquire_child.py COUNT TAG [URL]``: acquires COUNT VMs tagged TAG in one
call (journalled in ``$AIORES_STATE_DIR``), says ``acquired N`` and sleeps.
"""

from __future__ import annotations

import asyncio
import sys

import aiores


async def main(count: int, tag: str, url: str) -> None:
    async with aiores.Session() as session:
        desc = aiores.ComputeDescription(template="tiny", tags={tag})
        vms = await session.manager(url).acquire_many(desc, count)
        print("acquired", len(vms), flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    url = sys.argv[3] if len(sys.argv) > 3 else "sim://?boot_delay=0.05-0.2"
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], url))
