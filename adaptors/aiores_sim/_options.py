"""What the simulated cloud offers (templates, images) and the faults it can inject.

Faults come from the manager URL's query (``sim://?boot_failure=0.2&boot_delay=0.5-2``)
and, per description, from ``#sim:`` lines in its user data, which win::

    ComputeDescription(user_data="#sim: die_after=5 ssh_delay=0.5")

=================  =====================================================================
option             meaning
=================  =====================================================================
boot_delay         seconds from PENDING to ACTIVE: ``1.5`` (fixed), ``0.5-2`` (uniform),
                   ``exp:1.0`` (exponential with that mean); default ``0.5-1.5``
boot_failure       probability that a VM fails to boot (-> FAILED)
die_after          seconds after ACTIVE at which the VM dies (-> FAILED)
preempt_after      seconds after ACTIVE at which a preemption notice comes: the VM stays
                   ACTIVE with state_detail "preempting" and ``extra["preempt_at"]``
                   (epoch seconds), ``extra["preempt_in"]`` (seconds left, pushed
                   afresh at least 4 times in the notice, at most 1 s apart)
preempt_notice     seconds of that notice before the VM goes (-> EXPIRED, "preempted");
                   default 2
revoke             seconds after ACTIVE at which the provider asks the VM back, as
                   CloudLab's NotifyDeletePending: it stays ACTIVE with state_detail
                   "delete-pending" and ``extra["max_wait_time"]`` (seconds left,
                   pushed afresh at least 4 times, at most 1 s apart, each smaller);
                   at 0 it is gone (-> EXPIRED, "revoked: ...", ``max_wait_time`` 0)
revoke_wait        the ``max_wait_time`` of that first notice; default 2; 0: the VM is
                   gone at once (its only notice says 0)
ssh_delay          seconds each SSH login is held before authentication goes on
wrong_host_key     probability that a VM boots with a host key other than the one
                   it published (a machine-in-the-middle; clients refuse it)
seed               seed of the random draws (same seed, same cloud behaviour)
users              login names the VM knows besides ``root`` and the acquiring user
                   (``users=wf,ops``); each has a home of its own (``/home/<name>``)
                   and a uid (1001, 1002, ... in that order); a login as anyone else
                   is refused, as sshd does
=================  =====================================================================
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiores import BadParameter, DoesNotExist
from aiores.adaptor import Image, Template, validate

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_TEMPLATE",
    "IMAGES",
    "TEMPLATES",
    "Delay",
    "Faults",
    "choose_template",
    "parse_faults",
]


TEMPLATES: tuple[Template, ...] = (
    Template(name="tiny", cpus=1, memory=512),
    Template(name="small", cpus=1, memory=2048),
    Template(name="medium", cpus=2, memory=4096),
    Template(name="large", cpus=4, memory=8192),
    Template(name="xlarge", cpus=8, memory=16384),
)
IMAGES: tuple[Image, ...] = (
    Image(name="sim-linux", description="this host's userland, as it is"),
    Image(name="sim-debian-12", description="labelled Debian 12 (this host's userland)"),
    Image(name="sim-ubuntu-24.04", description="labelled Ubuntu 24.04 (this host's userland)"),
    Image(name="sim-alpine-3.20", description="labelled Alpine 3.20 (this host's userland)"),
)
DEFAULT_TEMPLATE = "small"
DEFAULT_IMAGE = "sim-linux"


def choose_template(name: str | None, cpus: int | None, memory: int | None) -> Template:
    """The named template, else the smallest one with ``cpus`` and ``memory`` (MiB).

    Raises:
        DoesNotExist: no template has that name (the message lists them).
        BadParameter: the template is smaller than ``cpus``/``memory``, or none is as big.
    """
    if name is not None:
        for template in TEMPLATES:
            if template.name == name:
                break
        else:
            known = ", ".join(t.name for t in TEMPLATES)
            raise DoesNotExist(f"sim:// has no template {name!r}; it has: {known}")
        if (cpus or 0) > (template.cpus or 0) or (memory or 0) > (template.memory or 0):
            raise BadParameter(
                f"template {name!r} has {template.cpus} CPUs and {template.memory} MiB, "
                f"less than the {cpus} CPUs / {memory} MiB asked for"
            )
        return template
    if cpus is None and memory is None:
        return next(t for t in TEMPLATES if t.name == DEFAULT_TEMPLATE)
    for template in TEMPLATES:
        if (cpus or 0) <= (template.cpus or 0) and (memory or 0) <= (template.memory or 0):
            return template
    raise BadParameter(f"sim:// has no template with {cpus} CPUs and {memory} MiB")


@dataclass(frozen=True, slots=True)
class Delay:
    """A distribution of delays in seconds: fixed, uniform or exponential."""

    low: float
    high: float
    mean: float | None = None  # exponential when set

    @classmethod
    def parse(cls, name: str, text: str) -> Delay:
        """``1.5``, ``0.5-2`` or ``exp:1.0``.

        Raises:
            BadParameter: anything else, or a negative number.
        """
        try:
            if text.startswith("exp:"):
                mean = float(text[4:])
                if not math.isfinite(mean) or mean < 0:
                    raise ValueError(text)
                return cls(0.0, math.inf, mean)
            low_text, sep, high_text = text.partition("-")
            low = float(low_text)
            high = float(high_text) if sep else low
        except ValueError:
            raise BadParameter(
                f"sim:// option {name}={text!r}: expected seconds (1.5), a range (0.5-2) "
                "or an exponential mean (exp:1.0)"
            ) from None
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
            raise BadParameter(f"sim:// option {name}={text!r}: need 0 <= low <= high")
        return cls(low, high)

    def draw(self, rng: random.Random) -> float:
        if self.mean is not None:
            return rng.expovariate(1.0 / self.mean) if self.mean > 0 else 0.0
        return self.low if self.high == self.low else rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        if self.mean is not None:
            return f"exp:{self.mean:g}"
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}-{self.high:g}"


@dataclass(frozen=True, slots=True)
class Faults:
    """How a VM behaves, and whom it lets in (see the module docstring for each field)."""

    boot_delay: Delay = Delay(0.5, 1.5)
    boot_failure: float = 0.0
    die_after: float | None = None
    preempt_after: float | None = None
    preempt_notice: float = 2.0
    revoke: float | None = None
    revoke_wait: float = 2.0
    ssh_delay: float = 0.0
    wrong_host_key: float = 0.0
    seed: int | None = None
    users: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["boot_delay"] = str(self.boot_delay)
        data["users"] = ",".join(self.users)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Faults:
        return parse_faults({k: str(v) for k, v in data.items() if v is not None})


_PROBABILITIES = ("boot_failure", "wrong_host_key")
_SECONDS = (
    "die_after",
    "preempt_after",
    "preempt_notice",
    "revoke",
    "revoke_wait",
    "ssh_delay",
)
OPTIONS = ("boot_delay", *_PROBABILITIES, *_SECONDS, "seed", "users")
#: A login name a VM can know (as useradd's default rule has it).
LOGIN_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def parse_faults(
    items: Mapping[str, str] | Iterable[tuple[str, str]], base: Faults = Faults()
) -> Faults:
    """Faults from ``name=value`` pairs, on top of ``base``.

    Raises:
        BadParameter: an unknown option (the message lists the known ones) or a bad value.
    """
    pairs = items.items() if isinstance(items, Mapping) else items
    changes: dict[str, Any] = {}
    for name, text in pairs:
        if name == "boot_delay":
            changes[name] = Delay.parse(name, text)
        elif name in _PROBABILITIES:
            value = _number(name, text)
            if not 0.0 <= value <= 1.0:
                raise BadParameter(f"sim:// option {name}={text!r}: a probability is 0..1")
            changes[name] = value
        elif name in _SECONDS:
            value = _number(name, text)
            if value < 0:
                raise BadParameter(f"sim:// option {name}={text!r}: seconds must be >= 0")
            changes[name] = value
        elif name == "seed":
            try:
                changes[name] = int(text)
            except ValueError:
                raise BadParameter(f"sim:// option seed={text!r}: an integer") from None
        elif name == "users":
            changes[name] = parse_users(text)
        else:
            raise BadParameter(
                f"sim:// has no option {name!r}; it has: {', '.join(sorted(OPTIONS))}"
            )
    return dataclasses.replace(base, **changes)


def parse_users(text: str) -> tuple[str, ...]:
    """Login names from ``wf,ops`` (in order, each once; empty: none).

    Raises:
        BadParameter: a name that is no login name.
    """
    names: list[str] = []
    for name in text.split(",") if text else ():
        if not LOGIN_NAME.fullmatch(name):
            raise BadParameter(
                f"sim:// option users={text!r}: {name!r} is no login name "
                "(a-z, 0-9, _ and -, at most 32, not starting with a digit or -)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _number(name: str, text: str) -> float:
    field = f"sim:// option {name}"
    return validate.number(validate.parse_number(text, field), field)


def user_data_faults(user_data: str | None) -> list[tuple[str, str]]:
    """``name=value`` pairs from the ``#sim:`` lines of a description's user data."""
    pairs: list[tuple[str, str]] = []
    for line in (user_data or "").splitlines():
        if not line.startswith("#sim:"):
            continue
        for word in line[5:].split():
            name, sep, value = word.partition("=")
            if not sep:
                raise BadParameter(f"user data line {line!r}: expected name=value, not {word!r}")
            pairs.append((name, value))
    return pairs
