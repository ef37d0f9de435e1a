"""``sim://``: a simulated cloud on this machine whose VMs are real SSH servers.

Each VM is an asyncssh server on 127.0.0.1 with a port, an ed25519 host key and a
"disk" (a directory) of its own; commands run there as local processes, files go
there over SFTP, and aiores reaches it through the same ``ssh://`` adaptor as a
real VM, pinning the host key the cloud published (never trust on first use). The
cloud runs in a separate process, one per directory (``$AIORES_SIM_DIR``, else
``<state dir>/sim``), started on demand, so VMs outlive the process that asked for
them; ``aiores sim stop`` ends it and all its VMs.

    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.2-1")
        vm = await mgr.acquire(aiores.ComputeDescription(template="small", tags={"web"}))
        await vm.wait(aiores.ResourceState.ACTIVE)
        print(await vm.run("hostname; pwd"))
        await vm.destroy()

Each VM is named by its id (``hostname``, ``uname -n``) and knows its users: root,
the acquiring user, and those of the ``users`` option (``sim://?users=wf,ops``), each
with a home and uid of its own (``whoami``, ``id``); it refuses logins of anyone else
as sshd does (AuthenticationFailed). Commands all run as this machine's user.

Fault injection (boot delay distribution and failures, VMs that die, are preempted
or revoked with a delete-pending countdown, slow SSH, a wrong host key) is set per
manager URL or per description: see :mod:`aiores_sim._options`. A VM acquired with a
``duration`` holds a lease, ended (EXPIRED) at the cloud and renewed with
``vm.renew(seconds)``; provider values come with
:meth:`SimResourceAdaptor.set_values`: see :mod:`aiores_sim._lease`.
"""

from __future__ import annotations

from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin

from ._adaptor import SimResourceAdaptor, url_faults
from ._client import CloudClient, cloud_pid, start_cloud, stop_cloud
from ._cloud import Cloud, CloudRunning
from ._keys import MANAGED_KEY, managed_key
from ._options import IMAGES, TEMPLATES, Delay, Faults
from ._protocol import cloud_dir

__all__ = [
    "IMAGES",
    "MANAGED_KEY",
    "TEMPLATES",
    "Cloud",
    "CloudClient",
    "CloudRunning",
    "Delay",
    "Faults",
    "SimPlugin",
    "SimResourceAdaptor",
    "cloud_dir",
    "cloud_pid",
    "managed_key",
    "plugin",
    "start_cloud",
    "stop_cloud",
]


class SimPlugin(AdaptorPlugin):
    """Opens the ``sim://`` resource manager."""

    name = "sim"
    schemes = frozenset({"sim"})

    def endpoint(self, url: URL) -> str:
        """``sim://`` plus its fault options, sorted: the options shape the endpoint."""
        url_faults(url)
        return str(URL(scheme="sim", query=tuple(sorted(url.query))))

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> SimResourceAdaptor:
        return SimResourceAdaptor(url, env)


#: The plugin the registry loads for ``sim://``.
plugin = SimPlugin()
