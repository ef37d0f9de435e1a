"""The contract adaptors implement.

An adaptor package exposes one :class:`AdaptorPlugin`: it names the URL schemes it
handles and opens capability objects for a URL. Each capability is a small async base
class; an adaptor implements the ones its backend supports and inherits
``NotSupported`` for the rest:

- :class:`ResourceAdaptor`: acquire n resources under an idempotency token, destroy,
  describe in batch, list, templates and images.
- :class:`JobAdaptor`: submit, describe in batch, cancel, hold, release, suspend, resume.
- :class:`FileAdaptor`: put, get, list, remove.
- :class:`CommandRunner`: run one command and return its :class:`~aiores.RunResult`.

Adaptors report states with :class:`ResourceInfo` / :class:`JobInfo`, mapping native
states through a table, and translate native errors into the aiores tree at the
boundary. Backends that push state changes call :meth:`Adaptor.publish`; backends
that must be polled set :attr:`Adaptor.poll` and the session's shared watcher calls
``describe`` for every watched object of the endpoint in one batch per tick.

Third-party adaptors register through the entry point group ``aiores.adaptors``,
whose value is an :class:`AdaptorPlugin` instance or class.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from . import _concurrency as concurrency
from . import _heap as heap
from . import _private as private
from . import _shell as shell
from . import _validate as validate
from ._concurrency import Cleanups
from ._contexts import Context
from ._descriptions import ComputeDescription, JobDescription, StorageDescription
from ._exceptions import DoesNotExist, NotSupported
from ._limits import Bucket, Governor, RetryPolicy, Transience
from ._results import RunResult
from ._states import JobState, ResourceState
from ._url import URL

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = [
    "URL",
    "Adaptor",
    "AdaptorEnv",
    "AdaptorPlugin",
    "Bucket",
    "CommandRunner",
    "Control",
    "Describes",
    "FileAdaptor",
    "Governor",
    "Image",
    "JobAdaptor",
    "JobInfo",
    "MachineInfo",
    "PollPolicy",
    "QueueInfo",
    "ResourceAdaptor",
    "ResourceInfo",
    "RetryPolicy",
    "Template",
    "Transience",
    "concurrency",
    "heap",
    "missing",
    "private",
    "shell",
    "truncation_marker",
    "validate",
]

RType = Literal["compute", "storage", "network"]
#: What :meth:`JobAdaptor.control_many` does to several jobs.
Control = Literal["cancel", "hold", "release", "suspend", "resume"]
C = TypeVar("C", bound=Context)
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceInfo:
    """What a backend says about one resource at one moment.

    ``id`` is the backend's own id. ``access`` is the URL through which jobs, commands
    and files reach it (``ssh://user@host:port``, ``local://``), once known.
    ``host_keys`` are public keys the backend vouches for (pinned, not trusted on
    first use). ``login_keys`` are private key files that log in to it (the key the
    backend authorized at boot: an aiores-managed key, a cloud key pair), offered
    before the context's keys. ``token`` is the idempotency token it was created under.
    ``existing`` marks a machine aiores did not make and does not own (``hosts://``):
    the core takes it as ACTIVE when the backend says so, with no readiness probe, and
    does not journal it (it is never a leak to reap).
    """

    id: str
    state: ResourceState
    state_detail: str = ""
    rtype: RType = "compute"
    access: str | None = None
    public_address: str | None = None
    private_address: str | None = None
    tags: frozenset[str] = frozenset()
    token: str | None = None
    host_keys: tuple[str, ...] = ()
    login_keys: tuple[str, ...] = ()
    existing: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInfo:
    """What a backend says about one job at one moment (``id`` is the native id)."""

    id: str
    state: JobState
    state_detail: str = ""
    exit_code: int | None = None
    stdout: bytes | None = None
    stderr: bytes | None = None
    token: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueInfo:
    """A queue (a Slurm partition) of a job service, as its backend describes it.

    Args:
        name: The queue's name (what ``JobDescription.queue`` takes).
        state: The backend's own word for it (Slurm: ``up``, ``down``, ``drain``...).
        default: Whether jobs naming no queue go to it.
        nodes: How many machines it has.
        cpus: How many CPUs those machines have in all.
        memory: The memory of its smallest machine, in MiB.
        walltime: The longest walltime it allows, in seconds (None: no limit).
        extra: Backend-specific facts (Slurm: ``cpus_idle``, ``node_names``).
    """

    name: str
    state: str
    default: bool = False
    nodes: int | None = None
    cpus: int | None = None
    memory: int | None = None
    walltime: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineInfo:
    """A machine (a Slurm node) that runs a job service's jobs.

    Args:
        name: The machine's name.
        state: The backend's own word for it (Slurm: ``idle``, ``mixed``,
            ``allocated``, ``down``...).
        cpus: Its CPUs.
        memory: Its memory in MiB.
        queues: The queues that send jobs to it.
        extra: Backend-specific facts (Slurm: ``cpus_idle``, ``load``).
    """

    name: str
    state: str
    cpus: int | None = None
    memory: int | None = None
    queues: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A size a backend offers (an instance type)."""

    name: str
    cpus: int | None = None
    memory: int | None = None  # MiB
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An image a backend can boot."""

    name: str
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How the shared watcher polls an endpoint.

    The interval starts at ``floor``, grows by ``backoff`` after each tick that saw no
    change up to ``ceiling``, returns to ``floor`` on a change, and is spread by
    ``jitter`` (a fraction) so that many endpoints do not tick together. ``batch`` is
    the most ids one ``describe`` call accepts.
    """

    floor: float = 1.0
    ceiling: float = 15.0
    backoff: float = 1.5
    jitter: float = 0.1
    batch: int = 1000


class AdaptorEnv(Protocol):
    """What a session offers the adaptors it opens."""

    @property
    def state_dir(self) -> Path:
        """The aiores state directory (journal, keys, the simulated cloud)."""
        ...

    @property
    def clock(self) -> Clock:
        """The session's clock (injectable for tests)."""
        ...

    @property
    def session_id(self) -> str:
        """The id of the session (``s-`` and 12 hex digits), unique per session."""
        ...

    @property
    def cleanups(self) -> Cleanups:
        """The session's shielded, bounded cleanups (:class:`aiores.adaptor.concurrency.Cleanups`).

        ``await env.cleanups.run(fn, what=...)`` runs ``fn()`` to its end or the
        session's ``cleanup_timeout`` whatever cancels the caller; the session waits for
        what still runs when it closes, before it closes its adaptors.
        """
        ...

    def shared(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value under ``key`` shared by the session's adaptors, made by ``make()`` first.

        For what several adaptors of one session share (a connection pool, an AWS
        client): a value with an ``aclose`` coroutine method is closed when the
        session closes, after its adaptors. Keys are the adaptor's own (a class, or a
        tuple starting with one), so two adaptors never collide.
        """
        ...

    def context(self, kind: type[C], host: str = "") -> C | None:
        """The session's first context of ``kind`` that applies to ``host``."""
        ...

    def spawn(self, fn: Callable[[], Awaitable[None]], *, name: str) -> object:
        """Run ``fn()`` in the session's task group; it is cancelled when the session closes.

        (The session returns the task; adaptors need not use it.)
        """
        ...

    def pinned_host_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        """Host keys a resource adaptor vouched for at ``host:port`` (public key texts).

        A transport verifies a server against these before anything else: they are how
        a freshly booted machine is verified without trusting its first answer.
        """
        ...

    def login_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        """Private key files a resource adaptor said log in at ``host:port``."""
        ...

    async def command_runner(self, url: str | URL) -> CommandRunner:
        """The session's (shared) command runner for ``url``."""
        ...

    async def job_adaptor(self, url: str | URL) -> JobAdaptor:
        """The session's (shared) job adaptor for ``url``."""
        ...

    async def file_adaptor(self, url: str | URL) -> FileAdaptor:
        """The session's (shared) file adaptor for ``url``."""
        ...


@runtime_checkable
class Describes(Protocol):
    """An adaptor the shared watcher can poll: its endpoint and a batch ``describe``.

    :class:`ResourceAdaptor` and :class:`JobAdaptor` are both; the watcher needs no
    more of an adaptor than this.
    """

    url: URL
    poll: PollPolicy | None

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo | JobInfo]:
        """The current state of each id; unknown ids are left out."""
        ...


class Adaptor(abc.ABC):  # noqa: B024 - the capabilities below declare the abstract methods
    """What every capability object has: its URL, its session, push and poll hooks.

    Subclasses open connections in :meth:`open` (called once, before first use)
    and release them in :meth:`aclose` (called when the session closes).
    """

    #: How the shared watcher polls this adaptor; None means it pushes every change.
    poll: PollPolicy | None = None

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        self.url = url
        self.env = env
        self._listener: Callable[[Any], None] | None = None

    async def open(self) -> None:  # noqa: B027 - an optional hook
        """Connect or prepare; called once before first use."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook
        """Release connections and background work; called when the session closes."""

    def publish(self, info: ResourceInfo | JobInfo) -> None:
        """Report a state change without being asked (push-style backends)."""
        if self._listener is not None:
            self._listener(info)

    def set_listener(self, listener: Callable[[Any], None]) -> None:
        """Called by the core: where :meth:`publish` delivers."""
        self._listener = listener

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{self.url.scheme}:// does not support {what}")


class ResourceAdaptor(Adaptor):
    """Acquires, describes and releases resources of one backend endpoint."""

    #: True if it acquires networks (:class:`~aiores.NetworkDescription`) and places
    #: machines on them (``ComputeDescription.network``); see :meth:`acquire`.
    supports_networks: bool = False

    @abc.abstractmethod
    async def acquire(
        self,
        description: ComputeDescription | StorageDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Create ``count`` resources in one backend call where possible.

        With :attr:`supports_networks`, ``description`` may be a
        :class:`~aiores.NetworkDescription` (the adaptor widens its signature),
        and a ComputeDescription's ``network`` is the native id of a network of
        this endpoint (the core checked the endpoint). Networks are reported with
        ``rtype="network"`` and their range as ``extra["cidr"]``, and :meth:`destroy`
        releases them after the machines among the same ids. Without it the core
        refuses both with NotSupported before calling.

        ``token`` is an idempotency token: the backend must be able to find what this
        call created by it (:meth:`find`), even if this call never returns.
        """

    @abc.abstractmethod
    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Every resource created under ``token`` that still exists."""

    @abc.abstractmethod
    async def destroy(self, ids: Sequence[str]) -> None:
        """Release the resources; ids already gone are not an error."""

    @abc.abstractmethod
    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """The current state of each id (at most ``poll.batch`` ids); unknown ids are left out."""

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """Resources this endpoint holds that carry all ``tags``."""
        raise self._unsupported("listing resources")

    async def list_templates(self) -> Sequence[Template]:
        """The sizes this backend offers."""
        return ()

    async def list_images(self) -> Sequence[Image]:
        """The images this backend can boot."""
        return ()

    async def reconfig(
        self, id: str, description: ComputeDescription | StorageDescription
    ) -> ResourceInfo:
        """Change a resource in place."""
        raise self._unsupported("reconfig")

    async def renew(self, id: str, seconds: float) -> ResourceInfo:
        """Renew the lease of a machine acquired with a ``duration``: it ends ``seconds``
        from now (not ``seconds`` later than it would have).

        The backend must end the machine at the new end even if nothing of aiores
        survives (the lease lives at the backend or on the machine, not in the
        client). Returns its info, with the new end in ``extra["expires_at"]``
        (seconds since the epoch), as every info of a leased machine carries it.

        Raises:
            NotSupported: the backend has no leases (this default).
            IncorrectState: the machine has no lease, or has ended.
            DoesNotExist: the backend does not know it.
        """
        raise NotSupported(
            f"{self.url.scheme}:// does not support renewing leases (Compute.renew): "
            "its machines run until destroyed"
        )

    async def reached(self, info: ResourceInfo, runner: CommandRunner) -> ResourceInfo:
        """Called once a machine first answered through its access URL, before ACTIVE.

        ``runner`` reaches it over a connection verified against ``info.host_keys``.
        Returns its info, changed where this hook changed the machine (``ec2://``
        rotates the host key it injected at boot, and returns the new one). A
        transient error (NoSuccess, Timeout) makes the core try again; any other
        reaches those waiting for the machine. The default changes nothing.
        """
        return info


class JobAdaptor(Adaptor):
    """Submits and controls jobs on one backend endpoint."""

    #: True if ``submit(..., hold=True)`` is honoured (the job is HELD until released);
    #: the core refuses ``hold=True`` with NotSupported otherwise.
    supports_hold: bool = False
    #: True if :meth:`submit_array` submits a whole array in one backend call (the
    #: backend throttles ``max_parallel`` itself); the core then calls it once
    #: instead of submitting the members one by one.
    supports_arrays: bool = False
    #: True if ``JobDescription.native`` (backend-specific options) is honoured; the
    #: core refuses a description with ``native`` options with NotSupported otherwise.
    accepts_native: bool = False

    @abc.abstractmethod
    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Start (or queue) one job; the backend must be able to :meth:`find` it by token."""

    async def submit_array(
        self,
        description: JobDescription,
        token: str,
        indices: Sequence[int],
        max_parallel: int | None,
        *,
        hold: bool,
    ) -> Sequence[JobInfo]:
        """Submit one job per index in one backend call (only if :attr:`supports_arrays`).

        Each member runs ``description`` with its index in ``$AIORES_ARRAY_INDEX``;
        at most ``max_parallel`` of them (None: no limit) run at once, throttled by
        the backend. :meth:`find` must name every member by ``token``.

        Returns:
            One info per index, in the order of ``indices``.
        """
        raise self._unsupported("job arrays")

    @abc.abstractmethod
    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The current state of each job id; unknown ids are left out."""

    @abc.abstractmethod
    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job submitted under ``token`` (for cleanup after a cancelled submit).

        Without it a cancelled submit could not be undone: it is not optional.
        """

    async def list(self) -> Sequence[JobInfo]:
        """The jobs this endpoint knows."""
        raise self._unsupported("listing jobs")

    async def queues(self) -> Sequence[QueueInfo]:
        """The queues (partitions) this endpoint offers."""
        raise self._unsupported("listing queues")

    async def machines(self) -> Sequence[MachineInfo]:
        """The machines (nodes) that run this endpoint's jobs."""
        raise self._unsupported("listing machines")

    async def cancel(self, id: str) -> None:
        """Stop the job (TERM, then KILL after a grace period, where that applies)."""
        raise self._unsupported("cancel")

    async def hold(self, id: str) -> None:
        """Keep a queued job from starting."""
        raise self._unsupported("hold")

    async def release(self, id: str) -> None:
        """Let a held job start."""
        raise self._unsupported("release")

    async def suspend(self, id: str) -> None:
        """Pause a running job."""
        raise self._unsupported("suspend")

    async def resume(self, id: str) -> None:
        """Continue a suspended job."""
        raise self._unsupported("resume")

    async def reap(self, id: str) -> None:
        """Forget a finished job and free what the backend kept for it."""
        raise self._unsupported("reap")

    async def control_many(self, what: Control, ids: Sequence[str]) -> Sequence[Exception | None]:
        """Apply :meth:`cancel`, :meth:`hold`, :meth:`release`, :meth:`suspend` or
        :meth:`resume` (``what``) to several jobs at once (the members of an array).

        Returns:
            One outcome per id, in order: None when done, else the error that id's
            own call would have raised.

        The default calls the one-job method for every id together; a backend that
        acts on many jobs with one call overrides it.
        """
        act: Callable[[str], Awaitable[None]] = getattr(self, what)
        return await concurrency.settle(act(job_id) for job_id in ids)


class FileAdaptor(Adaptor):
    """Moves files to and from one backend endpoint."""

    async def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file or directory to ``remote``."""
        raise self._unsupported("put")

    async def get(self, remote: str, local: str | Path) -> None:
        """Copy ``remote`` (file or directory) to a local path."""
        raise self._unsupported("get")

    async def list(self, remote: str) -> Sequence[str]:
        """Names in a remote directory."""
        raise self._unsupported("listing files")

    async def remove(self, remote: str) -> None:
        """Remove a remote file (or empty directory)."""
        raise self._unsupported("removing files")


class CommandRunner(Adaptor):
    """Runs one command to completion (locally, or over a transport such as SSH)."""

    @abc.abstractmethod
    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        """Run ``command`` and return its result.

        A str is a shell command (the caller asked for a shell); a sequence is a program
        and its arguments, quoted wherever a shell is unavoidable. A non-zero exit is a
        result, not an error. Cancelling it stops the command. Raises
        :class:`~aiores.Timeout` after ``timeout`` seconds, having stopped the command.

        ``on_output``, if given, is called on the event loop with ``"stdout"`` or
        ``"stderr"`` and each chunk of output (undecoded; chunks are not lines) as it
        arrives, and never after ``run`` has returned or raised; the result still
        carries the whole captured output. An adaptor that cannot stream calls it once
        per stream with everything, before returning. It must not raise: if it does,
        the command is stopped as a cancelled one is and ``run`` raises that error.
        The core passes ``on_output`` only when a caller asked for it, so a runner
        written before it existed still runs commands.
        """


class AdaptorPlugin:
    """One adaptor package: the schemes it handles and the capabilities it opens.

    The core calls the ``*_adaptor`` factories once per endpoint (see
    :meth:`endpoint`) and shares the object across every manager and job service of
    the session that uses that endpoint.
    """

    #: A unique name (the registry refuses two plugins with one name).
    name: str = ""
    #: URL schemes handled (``"sim"``, ``"ssh"``). A compound scheme ("adaptor over
    #: transport") is declared in full (``{"slurm", "slurm+ssh"}``): the core refuses
    #: one its plugin does not declare (``local+ssh://`` means nothing) with IncorrectURL.
    schemes: frozenset[str] = frozenset()
    #: True if its URLs must name a host (``ssh://host``): the core refuses one that
    #: does not with IncorrectURL, before anything is opened.
    needs_host: bool = False

    def accepts(self, url: URL) -> bool:
        """True if this plugin handles ``url`` (used by ``any://``)."""
        return url.scheme in self.schemes

    def endpoint(self, url: URL) -> str:
        """A key naming the backend endpoint; objects with one key share adaptors."""
        return str(url.replace(path="", query=()))

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> ResourceAdaptor:
        raise NotSupported(f"{url.scheme}:// has no resource manager")

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> JobAdaptor:
        raise NotSupported(f"{url.scheme}:// has no job service")

    def file_adaptor(self, url: URL, env: AdaptorEnv) -> FileAdaptor:
        raise NotSupported(f"{url.scheme}:// has no file access")

    def command_runner(self, url: URL, env: AdaptorEnv) -> CommandRunner:
        raise NotSupported(f"{url.scheme}:// cannot run commands")


def truncation_marker(kept: int, dropped: int) -> bytes:
    """What ends captured output cut at ``JobDescription.capture_limit`` (every adaptor)."""
    text = f"\n[aiores: output truncated after {kept} bytes; {dropped} more bytes discarded]\n"
    return text.encode()


def missing(kind: str, id: str, url: URL) -> DoesNotExist:
    """The error for an id an endpoint does not know."""
    return DoesNotExist(f"no {kind} {id!r} at {url}")
