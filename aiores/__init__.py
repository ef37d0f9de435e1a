"""aiores: asyncio-native orchestration of compute.

Acquire resources (cloud VMs, simulated VMs, the local host), submit and control
jobs, and run commands on machines, thousands at once from one event loop; every
operation is awaitable, bounded by timeouts and safe to cancel.

    async with aiores.Session() as session:
        js = session.job_service("local://")
        job = await js.submit(aiores.JobDescription(executable="/bin/echo", arguments=["hi"]))
        await job.wait()
"""

from ._contexts import AWSContext, Context, DockerContext, SSHContext
from ._descriptions import (
    ComputeDescription,
    JobDescription,
    NetworkDescription,
    StorageDescription,
)
from ._exceptions import (
    AioresError,
    AuthenticationFailed,
    BadParameter,
    ConnectionLost,
    DoesNotExist,
    FanOutError,
    HostKeyError,
    IncorrectState,
    IncorrectURL,
    NoSuccess,
    NotSupported,
    PermissionDenied,
    Timeout,
)
from ._fleet import Fleet, Group, GroupResult, Provision, RunResult
from ._jobs import Job, JobArray, JobService, as_completed, wait_any
from ._jobsession import JobSession
from ._journal import Intent, Journal
from ._pool import MachineView, Policy, Pool, PoolEvent, PoolStats, PoolView, QueuePolicy
from ._recover import Leak, Problem, Reaped, Recovered
from ._registry import register_adaptor, unregister_adaptor
from ._resource import Compute, Manager, Network, Resource, Storage
from ._session import Session, state_dir
from ._states import JobState, ResourceState
from ._url import URL
from .adaptor import MachineInfo, QueueInfo

__version__ = "0.1.0"

__all__ = [
    "URL",
    "AWSContext",
    "AioresError",
    "AuthenticationFailed",
    "BadParameter",
    "Compute",
    "ComputeDescription",
    "ConnectionLost",
    "Context",
    "DockerContext",
    "DoesNotExist",
    "FanOutError",
    "Fleet",
    "Group",
    "GroupResult",
    "HostKeyError",
    "IncorrectState",
    "IncorrectURL",
    "Intent",
    "Job",
    "JobArray",
    "JobDescription",
    "JobService",
    "JobSession",
    "JobState",
    "Journal",
    "Leak",
    "MachineInfo",
    "MachineView",
    "Manager",
    "Network",
    "NetworkDescription",
    "NoSuccess",
    "NotSupported",
    "PermissionDenied",
    "Policy",
    "Pool",
    "PoolEvent",
    "PoolStats",
    "PoolView",
    "Problem",
    "Provision",
    "QueueInfo",
    "QueuePolicy",
    "Reaped",
    "Recovered",
    "Resource",
    "ResourceState",
    "RunResult",
    "SSHContext",
    "Session",
    "Storage",
    "StorageDescription",
    "Timeout",
    "as_completed",
    "register_adaptor",
    "state_dir",
    "unregister_adaptor",
    "wait_any",
]
