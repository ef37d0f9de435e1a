"""Reconnect to a VM by its id, as in SAGA: one program acquires it, later ones use it.

Run it with:

    python examples/reconnect.py start [CLOUD_URL]     # prints the new VM's id
    python examples/reconnect.py run ID -- uname -n    # a new program runs a command on it
    python examples/reconnect.py stop ID               # destroys it

``start`` boots one simulated VM (CLOUD_URL: ``sim://`` by default, e.g.
``"sim://?boot_delay=0.1"``), waits until it is ACTIVE, prints its id alone on
standard output and ends: the VM lives on. Its id, ``[sim://]-[vm-...]``, names the
cloud and the cloud's own id, which is all a later program needs to find it again
(quote it in the shell: it holds brackets)::

    vm=$(python examples/reconnect.py start)
    python examples/reconnect.py run "$vm" -- sh -c 'echo hello from $(pwd)'
    python examples/reconnect.py stop "$vm"

``run`` ends with the command's exit status. The journal records the VM too, so
``aiores ls`` lists it meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiores
from aiores import ComputeDescription, ResourceState

#: The cloud to reconnect through: the id's own URL may carry options (its query,
#: such as boot_delay) that do not change where the VM lives.
CLOUD = "sim://"


async def start(cloud: str) -> int:
    async with aiores.Session() as session:
        vm = await session.manager(cloud).acquire(ComputeDescription(tags={"reconnect"}))
        await vm.wait(ResourceState.ACTIVE, timeout=120)
        print(vm.id)
        print(f"{vm.id} is ACTIVE at {vm.access}; it outlives this program", file=sys.stderr)
    return 0


async def find(session: aiores.Session, vm_id: str) -> aiores.Compute:
    """The machine named by ``vm_id``, found at its cloud (DoesNotExist if unknown)."""
    resource = await session.manager(CLOUD).get(vm_id)
    if not isinstance(resource, aiores.Compute):
        raise aiores.BadParameter(f"{vm_id} is {resource.rtype}, not a machine")
    return resource


async def run(vm_id: str, command: list[str]) -> int:
    async with aiores.Session() as session:
        vm = await find(session, vm_id)
        # Found again, it is PENDING until SSH answers with the host key the cloud
        # published for it; waiting checks that (at once if it is up).
        await vm.wait(ResourceState.ACTIVE, timeout=60)
        # A list is a program and its arguments, never interpreted by a shell.
        result = await vm.run(command, timeout=60)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return 1 if result.exit_status is None else result.exit_status


async def stop(vm_id: str) -> int:
    async with aiores.Session() as session:
        vm = await find(session, vm_id)  # an unknown id is an error, not a silent no-op
        if vm.state.final:  # the cloud still describes it for a while after its end
            raise aiores.IncorrectState(f"{vm.id} has ended already ({vm.state.name})")
        await vm.destroy()
        print(f"destroyed {vm.id}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("start").add_argument("cloud", nargs="?", default=CLOUD)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("id")
    run_parser.add_argument("command", nargs="+", help="after --: the program and its arguments")
    commands.add_parser("stop").add_argument("id")
    args = parser.parse_args()
    try:
        if args.action == "start":
            return asyncio.run(start(args.cloud))
        if args.action == "run":
            return asyncio.run(run(args.id, args.command))
        return asyncio.run(stop(args.id))
    except aiores.AioresError as exc:  # one line, not a traceback
        print(f"reconnect.py {args.action}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
