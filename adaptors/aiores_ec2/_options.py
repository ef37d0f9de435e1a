"""The options of an ``ec2://`` URL (its query), validated once.

``ec2://<region>?option=value&...``; every option is optional:

==================  ==========================================================================
``endpoint``        The EC2 API endpoint (OpenStack, Eucalyptus, moto); default: the
                    AWSContext's ``endpoint_url``, else AWS's endpoint for the region.
``user``            The login name on the instances (``ssh://<user>@...``); default: the
                    SSHContext's user, else ``ec2-user`` (Amazon Linux; Ubuntu images use
                    ``ubuntu``, Debian ``admin``).
``template``        The instance type when the description names none (``t3.micro``).
``ssh_cidr``        Comma-separated address ranges admitted to port 22, by a security group
                    ``aiores-ssh-<hash>`` of these ranges alone (another set of ranges gets
                    another group). Default: the default VPC's own range (machines inside
                    the VPC); nothing on the internet is let in unless named here.
``security_group``  Use this existing group (by id ``sg-...`` or name) as it is, instead of
                    an ``aiores-ssh-`` group; aiores then adds no rules.
``key_name``        Use this existing key pair instead of the aiores-managed one (log in
                    with the SSHContext's key files then).
``subnet``          The subnet to launch in (default: the region's default).
``network``         ``vpc`` (default: a network is a VPC of its own) or ``default`` (a
                    network is a subnet of the default VPC); see :mod:`aiores_ec2._networks`.
``address``         ``public`` (default: the public address when there is one) or
                    ``private``: which address the access URL names.
``market``          ``on-demand`` (default) or ``spot`` (one-time spot instances, terminated
                    on interruption: they end EXPIRED).
``owners``          Comma-separated image owners ``list_images`` shows (``self,amazon``).
``types``           Comma-separated instance types ``list_templates`` shows, wildcards
                    allowed (``t3.*,m5.large``); default: every type of the region.
``limits``          ``aws`` (default: EC2's published request buckets) or ``off``.
``poll``            The watcher's first interval in seconds (default 2).
``max_connections`` Connections to the endpoint at most (default 50).
``batch``           Instances per RunInstances call at most (default 1000).
``interruptions``   ``metadata`` (default: read spot interruption notices from each spot
                    instance's metadata service over SSH; see :mod:`aiores_ec2._spot`),
                    ``events`` (receive them through an EventBridge rule and an SQS
                    queue aiores makes for the session; see :mod:`aiores_ec2._events`)
                    or ``off``.
``metadata``        The metadata service's address as the instances reach it,
                    ``http://host[:port]`` (default ``http://169.254.169.254``).
``interruption_poll``  Seconds between two reads of a spot instance's notice (default 5).
==================  ==========================================================================
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from aiores import BadParameter, IncorrectURL
from aiores.adaptor import URL, validate

__all__ = ["Options", "parse_options"]

_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_METADATA = re.compile(
    r"^http://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?$|^http://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?$"
)
_NAME = re.compile(r"^[\w.:/+=@*?-]{1,255}$")
KNOWN = frozenset(
    {
        "endpoint",
        "user",
        "template",
        "ssh_cidr",
        "security_group",
        "key_name",
        "subnet",
        "network",
        "address",
        "market",
        "owners",
        "types",
        "limits",
        "poll",
        "max_connections",
        "batch",
        "interruptions",
        "metadata",
        "interruption_poll",
    }
)


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed options of one ``ec2://`` URL (see the module docstring)."""

    region: str | None = None
    endpoint: str | None = None
    user: str | None = None
    template: str = "t3.micro"
    ssh_cidr: tuple[str, ...] | None = None
    security_group: str | None = None
    key_name: str | None = None
    subnet: str | None = None
    network: str = "vpc"
    address: str = "public"
    market: str = "on-demand"
    owners: tuple[str, ...] = ("self", "amazon")
    types: tuple[str, ...] = ()
    limits: bool = True
    poll: float = 2.0
    max_connections: int = 50
    batch: int = 1000
    interruptions: str = "metadata"
    metadata: str = "http://169.254.169.254"
    interruption_poll: float = 5.0


def _bad(url: URL, what: str) -> IncorrectURL:
    return IncorrectURL(f"{url}: {what}")


def _positive(url: URL, name: str, value: str, kind: type[int] | type[float]) -> float:
    try:
        number = validate.parse_number(value, name, kind)
        if kind is int:
            return validate.count(number, name)
        return validate.number(number, name, above=0)
    except BadParameter as exc:
        raise _bad(url, str(exc)) from None


def _name(url: URL, option: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _bad(url, f"{option} {value!r} is not a valid name")
    return value


def parse_options(url: URL) -> Options:
    """Validate an ``ec2://`` URL's host (the region) and options.

    Raises:
        IncorrectURL: an unknown option, or a value that cannot be right.
    """
    params = url.params
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise _bad(
            url, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
        )
    if url.user or url.port or url.path not in ("", "/"):
        raise _bad(url, "write ec2://<region>[?options] (no user, port or path)")
    region = url.host or None
    if region is not None and not _REGION.fullmatch(region):
        raise _bad(url, f"{region!r} is not a region name")
    kwargs: dict[str, object] = {"region": region}
    for key in ("endpoint", "user", "security_group", "key_name", "subnet", "template"):
        if params.get(key):
            kwargs[key] = params[key] if key == "endpoint" else _name(url, key, params[key])
    if "ssh_cidr" in params:
        ranges = []
        for part in params["ssh_cidr"].split(","):
            try:
                ranges.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise _bad(url, f"ssh_cidr {part!r} is not an address range") from None
        kwargs["ssh_cidr"] = tuple(ranges)
    address = params.get("address", "public")
    if address not in ("public", "private"):
        raise _bad(url, f"address must be 'public' or 'private', not {address!r}")
    kwargs["address"] = address
    network = params.get("network", "vpc")
    if network not in ("vpc", "default"):
        raise _bad(url, f"network must be 'vpc' or 'default', not {network!r}")
    kwargs["network"] = network
    market = params.get("market", "on-demand")
    if market not in ("on-demand", "spot"):
        raise _bad(url, f"market must be 'on-demand' or 'spot', not {market!r}")
    kwargs["market"] = market
    if "owners" in params:
        owners = tuple(_name(url, "owners", o.strip()) for o in params["owners"].split(","))
        kwargs["owners"] = owners
    if "types" in params:
        kwargs["types"] = tuple(_name(url, "types", t.strip()) for t in params["types"].split(","))
    limits = params.get("limits", "aws")
    if limits not in ("aws", "off"):
        raise _bad(url, f"limits must be 'aws' or 'off', not {limits!r}")
    kwargs["limits"] = limits == "aws"
    if "poll" in params:
        kwargs["poll"] = _positive(url, "poll", params["poll"], float)
    if "max_connections" in params:
        kwargs["max_connections"] = int(
            _positive(url, "max_connections", params["max_connections"], int)
        )
    if "batch" in params:
        kwargs["batch"] = int(_positive(url, "batch", params["batch"], int))
    interruptions = params.get("interruptions", "metadata")
    if interruptions not in ("metadata", "events", "off"):
        raise _bad(
            url, f"interruptions must be 'metadata', 'events' or 'off', not {interruptions!r}"
        )
    kwargs["interruptions"] = interruptions
    if "metadata" in params:
        metadata = params["metadata"]
        port = metadata.rstrip("/").rpartition(":")[2]
        if not _METADATA.fullmatch(metadata) or (port.isdigit() and not 0 < int(port) < 65536):
            raise _bad(url, f"metadata must be http://host[:port], not {metadata!r}")
        kwargs["metadata"] = metadata.rstrip("/")
    if "interruption_poll" in params:
        kwargs["interruption_poll"] = _positive(
            url, "interruption_poll", params["interruption_poll"], float
        )
    return Options(**kwargs)  # type: ignore[arg-type]
