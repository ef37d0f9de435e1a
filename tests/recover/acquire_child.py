"""A program that acquires VMs and then sleeps, to be killed in the middle.

``python acquire_child.py COUNT TAG [URL [IMAGE TEMPLATE]]``: acquires COUNT machines
tagged TAG in one call (journalled in ``$AIORES_STATE_DIR``), says ``acquired N`` and
sleeps. With an IMAGE, ACTIVE means "the cloud says running" (no SSH: moto).
"""

from __future__ import annotations

import asyncio
import sys

import aiores


async def main(argv: list[str]) -> None:
    count, tag = int(argv[0]), argv[1]
    url = argv[2] if len(argv) > 2 else "sim://?boot_delay=0.05-0.2"
    if len(argv) > 3:
        desc = aiores.ComputeDescription(image=argv[3], template=argv[4], tags={tag}, ready=None)
    else:
        desc = aiores.ComputeDescription(template="tiny", tags={tag})
    async with aiores.Session() as session:
        vms = await session.manager(url).acquire_many(desc, count)
        print("acquired", len(vms), flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
