"""``docker://`` URL options, container labels and the state tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiores import BadParameter, IncorrectURL, JobState, ResourceState
from aiores.adaptor import URL, validate

from ._daemon import LABEL

__all__ = [
    "Options",
    "container_of",
    "exit_detail",
    "job_state",
    "label",
    "labels_of",
    "machine_state",
    "parse_options",
]

#: Seconds from SIGTERM to SIGKILL when a job is cancelled, unless ``?grace=`` says.
DEFAULT_GRACE = 5.0
_CONTAINER = re.compile(r"[0-9a-f]{12,64}")
_KNOWN = frozenset({"image", "grace", "volume"})


@dataclass(frozen=True, slots=True)
class Options:
    """What a ``docker://`` URL's query says.

    Attributes:
        image: The image of jobs whose description names none (``?image=``), and of
            machines whose description names none.
        grace: Seconds from SIGTERM to SIGKILL on cancel (``?grace=``, default 5).
        volumes: Directories of the daemon's host mounted into every job and machine
            container (``?volume=/host/dir:/in/container[:ro],...``), so that jobs and
            machines of one endpoint share files.
    """

    image: str | None = None
    grace: float = DEFAULT_GRACE
    volumes: tuple[str, ...] = ()


def parse_options(url: URL) -> Options:
    """The options of ``url``; raises IncorrectURL naming one it does not know."""
    params = url.params
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise IncorrectURL(
            f"{url}: unknown option {unknown[0]!r}; docker:// takes ?image=NAME, "
            "?grace=SECONDS and ?volume=/HOST:/CONTAINER[:ro]"
        )
    image = params.get("image")
    if image is not None:
        validate.text(image, "docker:// option image")
    grace = DEFAULT_GRACE
    if "grace" in params:
        grace = validate.parse_number(params["grace"], "docker:// option grace")
        if grace < 0:
            raise BadParameter(f"docker:// option grace must be >= 0, not {grace}")
    volumes = tuple(_volume(v) for v in params["volume"].split(",")) if "volume" in params else ()
    return Options(image=image, grace=grace, volumes=volumes)


def _volume(text: str) -> str:
    """One ``/host:/container[:ro]`` bind, checked."""
    validate.text(text, "docker:// option volume")
    parts = text.split(":")
    if not 2 <= len(parts) <= 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise BadParameter(
            f"docker:// option volume must be /HOST:/CONTAINER or /HOST:/CONTAINER:ro, not {text!r}"
        )
    if not all(part.startswith("/") for part in parts[:2]):
        raise BadParameter(f"docker:// option volume needs absolute paths, not {text!r}")
    return text


def container_of(url: URL) -> str | None:
    """The container a ``docker://[host]/<container id>`` URL names (None: the daemon)."""
    path = url.path.strip("/")
    if not path:
        return None
    if not _CONTAINER.fullmatch(path):
        raise IncorrectURL(
            f"{url}: the path of a docker:// URL names a container by its id "
            f"(12 to 64 hex digits), not {path!r}"
        )
    return path


def label(name: str) -> str:
    """The full key of aiores's label ``name`` (``aiores.token``)."""
    return f"{LABEL}.{name}"


def labels_of(container: Mapping[str, Any]) -> dict[str, str]:
    """aiores's labels of a container (listing or inspect form), without the prefix."""
    labels = container.get("Labels")
    if labels is None:
        labels = (container.get("Config") or {}).get("Labels")
    prefix = LABEL + "."
    return {k[len(prefix) :]: str(v) for k, v in (labels or {}).items() if k.startswith(prefix)}


_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 9: "SIGKILL", 15: "SIGTERM"}


def exit_detail(code: int | None) -> str:
    """How a container's process ended, in words."""
    if code is None:
        return "exited"
    if code > 128 and code - 128 in _SIGNALS:
        return f"killed by {_SIGNALS[code - 128]} (exit status {code})"
    return f"exited with status {code}"


def job_state(status: str, exit_code: int | None, held: bool) -> JobState:
    """The job state of a container in Docker's ``status`` (``State`` of a listing).

    A created container that was never started is HELD if it was made on hold, else
    QUEUED (made and not started yet); ``exited`` is DONE for status 0, else FAILED.
    """
    status = status.lower()
    if status in ("created", "configured", "initialized"):
        return JobState.HELD if held else JobState.QUEUED
    if status in ("running", "restarting", "stopping"):
        return JobState.RUNNING
    if status == "paused":
        return JobState.SUSPENDED
    if status in ("exited", "stopped"):
        return JobState.DONE if exit_code == 0 else JobState.FAILED
    return JobState.FAILED  # dead, removing


def machine_state(status: str, exit_code: int | None, leased: bool) -> ResourceState:
    """The resource state of a machine container in Docker's ``status``.

    A machine whose lease (``duration``) ran out ends EXPIRED: its keep-alive
    process (``sleep <duration>``) exited 0.
    """
    status = status.lower()
    if status in ("created", "configured", "initialized"):
        return ResourceState.PENDING
    if status in ("running", "restarting", "paused"):
        return ResourceState.ACTIVE
    if status in ("exited", "stopped") and leased and exit_code == 0:
        return ResourceState.EXPIRED
    return ResourceState.FAILED


_EXITED = re.compile(r"Exited \((-?\d+)\)")


def listed_exit_code(container: Mapping[str, Any]) -> int | None:
    """The exit code a listing entry shows in its ``Status`` text (``Exited (3) ...``)."""
    match = _EXITED.search(str(container.get("Status", "")))
    return int(match.group(1)) if match else None
