"""What to acquire and what to run: validated, immutable descriptions.

Every field is checked when the description is made, so a wrong type fails at the
line that wrote it with :class:`~aiores.BadParameter`, not later inside a backend.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import _validate as check
from ._exceptions import BadParameter

__all__ = ["ComputeDescription", "JobDescription", "NetworkDescription", "StorageDescription"]

DEFAULT_CAPTURE_LIMIT = 8 * 1024 * 1024


def _opt_str(owner: str, name: str, value: object) -> str | None:
    if value is None:
        return None
    return check.text(value, f"{owner}.{name}", empty=True)


def _opt_positive(owner: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    return check.count(value, f"{owner}.{name}")


def _seconds(owner: str, name: str, value: object) -> float | None:
    if value is None:
        return None
    return check.seconds(value, f"{owner}.{name}")


def _tags(owner: str, value: object) -> frozenset[str]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise check.fail(f"{owner}.tags", "an iterable of str", value)
    tags = tuple(value)
    for tag in tags:
        if (
            not isinstance(tag, str)
            or not tag
            or any(c.isspace() or c == "," or not c.isprintable() for c in tag)
        ):
            raise BadParameter(
                f"{owner}.tags: each tag must be a non-empty str without spaces, commas "
                f"or control characters, not {tag!r}"
            )
        check.text(tag, f"{owner}.tags")
    return frozenset(tags)


def _path(owner: str, name: str, value: object) -> str | None:
    if value is None:
        return None
    return check.path(value, f"{owner}.{name}")


@dataclass(frozen=True, kw_only=True)
class ComputeDescription:
    """A machine to acquire.

    Args:
        image: The backend's image name (``list_images()`` names them).
        template: The backend's size name (``list_templates()`` names them).
        tags: Labels to select the resource by later (a str is one tag).
        cpus: Minimum number of CPUs, where the backend chooses the size.
        memory: Minimum memory in MiB, where the backend chooses the size.
        duration: Seconds (or a timedelta) after which the backend may expire it.
        user_data: Boot-time user data (cloud-init), passed to the backend as is.
        ready: ``"ssh"`` makes ACTIVE mean "SSH answers"; ``None`` makes it mean
            "the backend says running" (for backends without SSH).
        network: The :class:`~aiores.Network` (or its id) to place the machine on;
            it must belong to the same manager's cloud. Held as the network's id.
    """

    image: str | None = None
    template: str | None = None
    tags: frozenset[str] = field(default=frozenset())
    cpus: int | None = None
    memory: int | None = None
    duration: float | None = None
    user_data: str | None = None
    ready: Literal["ssh"] | None = "ssh"
    network: str | None = None

    if TYPE_CHECKING:  # what callers may pass; the fields hold the normalised values

        def __init__(
            self,
            *,
            image: str | None = None,
            template: str | None = None,
            tags: Iterable[str] | str = (),
            cpus: int | None = None,
            memory: int | None = None,
            duration: float | datetime.timedelta | None = None,
            user_data: str | None = None,
            ready: Literal["ssh"] | None = "ssh",
            network: str | HasId | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _set = object.__setattr__
        _opt_str(owner, "image", self.image)
        _opt_str(owner, "template", self.template)
        _opt_str(owner, "user_data", self.user_data)
        _set(self, "tags", _tags(owner, self.tags))
        _opt_positive(owner, "cpus", self.cpus)
        _opt_positive(owner, "memory", self.memory)
        _set(self, "duration", _seconds(owner, "duration", self.duration))
        if self.ready not in ("ssh", None):
            raise BadParameter(f"{owner}.ready must be 'ssh' or None, not {self.ready!r}")
        _set(self, "network", _network(owner, self.network))

    def replace(self, **changes: Any) -> ComputeDescription:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class StorageDescription:
    """Storage to acquire (a bucket, a volume).

    Args:
        name: The backend's name for it (a bucket name), or None to let aiores choose.
        size: Size in GiB where the backend needs one.
        tags: Labels to select it by later.
    """

    name: str | None = None
    size: int | None = None
    tags: frozenset[str] = field(default=frozenset())

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            name: str | None = None,
            size: int | None = None,
            tags: Iterable[str] | str = (),
        ) -> None: ...

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _opt_str(owner, "name", self.name)
        _opt_positive(owner, "size", self.size)
        object.__setattr__(self, "tags", _tags(owner, self.tags))


@dataclass(frozen=True, kw_only=True)
class NetworkDescription:
    """A private network to acquire: machines on it reach each other at private addresses.

    Args:
        cidr: Its address range, IPv4 in private address space, ``/16`` to ``/28``
            (``"10.20.0.0/24"``; ``sim://`` takes ranges of ``127.0.0.0/8``, such as
            ``"127.42.0.0/24"``). None lets the backend choose a free one.
        tags: Labels to select it by later.
        isolated: True (the default): no route to or from the internet is made.
            False: the backend adds one where it can (``ec2://``: an internet gateway,
            a default route, public addresses for its machines).
        ingress: Address ranges from which SSH (TCP 22) is admitted from outside the
            network (a str is one range); members always reach each other on every
            port. Empty (the default): nothing outside is admitted, unless the
            backend's URL says otherwise (``ec2://?ssh_cidr=...``).
    """

    cidr: str | None = None
    tags: frozenset[str] = field(default=frozenset())
    isolated: bool = True
    ingress: tuple[str, ...] = ()

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            cidr: str | None = None,
            tags: Iterable[str] | str = (),
            isolated: bool = True,
            ingress: Iterable[str] | str = (),
        ) -> None: ...

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _set = object.__setattr__
        if self.cidr is not None:
            _set(self, "cidr", check.address_range(self.cidr, f"{owner}.cidr"))
        _set(self, "tags", _tags(owner, self.tags))
        check.flag(self.isolated, f"{owner}.isolated")
        _set(self, "ingress", check.address_ranges(self.ingress, f"{owner}.ingress"))

    def replace(self, **changes: Any) -> NetworkDescription:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class HasId(Protocol):
    """What ``ComputeDescription(network=...)`` takes besides an id: a Network."""

    @property
    def id(self) -> str: ...

    @property
    def rtype(self) -> str: ...


def _network(owner: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return check.text(value, f"{owner}.network")
    if getattr(value, "rtype", None) == "network" and isinstance(getattr(value, "id", None), str):
        return str(value.id)  # type: ignore[attr-defined]
    raise check.fail(f"{owner}.network", "an aiores.Network, a network id or None", value)


@dataclass(frozen=True, kw_only=True)
class JobDescription:
    """A program to run as a job.

    ``executable`` and ``arguments`` are passed to the program as they are, never
    through a shell; use :meth:`shell` to run a shell command on purpose.

    Args:
        executable: The program (a path, or a name looked up in PATH).
        arguments: Its arguments.
        environment: Variables added to the job's environment.
        working_directory: Where it runs; must exist and be readable.
        stdin: Data written to its standard input (str is encoded as UTF-8).
        stdout: A file to write standard output to; None captures it on ``job.stdout``.
        stderr: A file to write standard error to; None captures it on ``job.stderr``.
        capture_limit: Bytes of captured output kept per stream; past it the output is
            cut and ends with a truncation marker.
        name: A name for the job (batch systems show it).
        walltime: Seconds (or a timedelta) after which the backend may kill it.
        queue: The batch queue (partition) to submit to.
        project: The account or project the job is charged to.
        processes: How many processes the job starts.
        cores: Cores per process.
        memory: Memory in MiB.
        category: A site-specific job category (DRMAA's job category).
        native: Options passed to the backend as they are, each one word (Slurm: extra
            ``sbatch`` options such as ``--nice=10``). Backends that take none refuse
            a description with some (NotSupported, at submit).
    """

    executable: str
    arguments: Sequence[str] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    stdin: bytes | str | None = None
    stdout: str | None = None
    stderr: str | None = None
    capture_limit: int = DEFAULT_CAPTURE_LIMIT
    name: str | None = None
    walltime: float | None = None
    queue: str | None = None
    project: str | None = None
    processes: int | None = None
    cores: int | None = None
    memory: int | None = None
    category: str | None = None
    native: Sequence[str] = ()

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            executable: str,
            arguments: Iterable[str] = (),
            environment: Mapping[str, str] | None = None,
            working_directory: str | os.PathLike[str] | None = None,
            stdin: bytes | str | None = None,
            stdout: str | os.PathLike[str] | None = None,
            stderr: str | os.PathLike[str] | None = None,
            capture_limit: int = DEFAULT_CAPTURE_LIMIT,
            name: str | None = None,
            walltime: float | datetime.timedelta | None = None,
            queue: str | None = None,
            project: str | None = None,
            processes: int | None = None,
            cores: int | None = None,
            memory: int | None = None,
            category: str | None = None,
            native: Iterable[str] = (),
        ) -> None: ...

    @classmethod
    def shell(cls, command: str, **fields: Any) -> JobDescription:
        """A job that runs ``command`` with ``/bin/sh -c`` (the caller asked for a shell)."""
        if not isinstance(command, str) or not command.strip():
            raise BadParameter(f"a shell command must be a non-empty str, not {command!r}")
        check.text(command, "command")
        return cls(executable="/bin/sh", arguments=("-c", command), **fields)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _set = object.__setattr__
        check.text(self.executable, f"{owner}.executable")
        if not self.executable.strip():
            raise BadParameter(f"{owner}.executable must not be blank")
        _set(self, "arguments", check.str_seq(self.arguments, f"{owner}.arguments"))
        environment = {} if self.environment is None else self.environment
        _set(self, "environment", check.env(environment, f"{owner}.environment"))
        _set(self, "working_directory", _path(owner, "working_directory", self.working_directory))
        if self.stdin is not None and not isinstance(self.stdin, (bytes, str)):
            raise check.fail(f"{owner}.stdin", "bytes, str or None", self.stdin)
        if isinstance(self.stdin, str):
            check.text(self.stdin, f"{owner}.stdin", empty=True)
        _set(self, "stdout", _path(owner, "stdout", self.stdout))
        _set(self, "stderr", _path(owner, "stderr", self.stderr))
        check.count(self.capture_limit, f"{owner}.capture_limit", min=0)
        for name in ("name", "queue", "project", "category"):
            _opt_str(owner, name, getattr(self, name))
        _set(self, "walltime", _seconds(owner, "walltime", self.walltime))
        for name in ("processes", "cores", "memory"):
            _opt_positive(owner, name, getattr(self, name))
        _set(self, "native", check.str_seq(self.native, f"{owner}.native", items_empty=False))

    @property
    def stdin_bytes(self) -> bytes | None:
        """``stdin`` as bytes (str encoded as UTF-8)."""
        return self.stdin.encode() if isinstance(self.stdin, str) else self.stdin

    def replace(self, **changes: Any) -> JobDescription:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def from_record(
    kind: type[ComputeDescription] | type[StorageDescription] | type[NetworkDescription],
    record: object,
) -> ComputeDescription | StorageDescription | NetworkDescription | None:
    """A resource's description as the journal recorded it, or None if it holds none.

    Fields the record lacks take their defaults; fields it has that ``kind`` does not
    know (written by another aiores version) are left out. What the journal never
    holds stays unset: a compute description comes back without its user data.
    """
    if not isinstance(record, Mapping):
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    try:
        return kind(**{k: v for k, v in record.items() if k in names})
    except (BadParameter, TypeError):
        return None
