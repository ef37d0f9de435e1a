"""``ec2://``: instances of Amazon EC2 and EC2-compatible clouds, on aioboto3.

A cloud VM is "lifecycle + SSH": this adaptor launches, watches and terminates
instances; commands, jobs and files on them go through ``ssh://`` (the access URL
of each instance), verified against the host key aiores made for it.

    async with aiores.Session(contexts=[aiores.AWSContext(profile="work")]) as session:
        mgr = session.manager("ec2://eu-west-1?ssh_cidr=203.0.113.7/32")
        desc = aiores.ComputeDescription(image="ami-0abc...", template="t3.micro", tags={"web"})
        vms = await mgr.acquire_many(desc, count=100)      # one RunInstances call
        # One DescribeInstances per tick for all 100; ACTIVE once SSH answers with
        # the host key aiores made for them.
        await asyncio.gather(*(vm.wait(aiores.ResourceState.ACTIVE) for vm in vms))
        print(await vms[0].run("uname -a"))
        await mgr.destroy(vms)                             # one TerminateInstances call

Install with ``pip install 'aiores[ec2]'``. Credentials come from the session's
:class:`~aiores.AWSContext` (scoped to the region, or unscoped), else the standard AWS
credential chain. ``?endpoint=http://host:port`` (or ``AWSContext.endpoint_url``)
points it at another EC2 API: OpenStack, Eucalyptus, moto. See
:mod:`aiores_ec2._options` for every option, :mod:`aiores_ec2._adaptor` for the
states and tags, :mod:`aiores_ec2._setup` for keys, security groups and user data,
:mod:`aiores_ec2._lease` for leases (``duration``, ``vm.renew(seconds)``).
"""

from __future__ import annotations

from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin

from ._adaptor import BUCKETS, EC2ResourceAdaptor, ec2_cost, native_state
from ._aws import Api, Target, aws_errors, classify, error_code, open_api, target, translate
from ._options import Options, parse_options
from ._setup import MANAGED_KEY, key_pair_name, managed_key, user_data

__all__ = [
    "BUCKETS",
    "MANAGED_KEY",
    "Api",
    "EC2Plugin",
    "EC2ResourceAdaptor",
    "Options",
    "Target",
    "aws_errors",
    "classify",
    "ec2_cost",
    "error_code",
    "key_pair_name",
    "managed_key",
    "native_state",
    "open_api",
    "parse_options",
    "plugin",
    "target",
    "translate",
    "user_data",
]


class EC2Plugin(AdaptorPlugin):
    """Opens the ``ec2://`` resource manager."""

    name = "ec2"
    schemes = frozenset({"ec2"})

    def endpoint(self, url: URL) -> str:
        """``ec2://<region>`` plus its options, sorted: the options shape the endpoint."""
        parse_options(url)
        return str(URL(scheme="ec2", host=url.host, query=tuple(sorted(url.query))))

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> EC2ResourceAdaptor:
        return EC2ResourceAdaptor(url, env)


#: The plugin the registry loads for ``ec2://``.
plugin = EC2Plugin()
