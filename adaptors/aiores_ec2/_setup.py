"""First-use set-up (like precip, but safe): key pair, security group, host keys, user data.

- **Login key.** An ed25519 key made locally on first use,
  ``<state dir>/keys/ec2_ed25519`` (0600, its ``.pub`` too, directory 0700),
  imported once per region
  as the key pair ``aiores-<fingerprint>`` (the name follows the key, so another
  machine's key never collides) and reused by every later acquire and session.
- **Security groups.** One group per ingress rule, never one shared group: the group
  ``aiores-ssh-<16 hex digits>`` (:func:`ssh_group_name`) of the default VPC (or of
  the ``subnet`` option's VPC) admits TCP 22 from exactly one set of ranges, the
  ``ssh_cidr`` option's (default: the VPC's own range), and nothing else. The name
  is a hash of that set, so asking for another range finds or makes another group
  and never changes what instances launched with an earlier range allow; the same
  set, in any order or spelling (``10.1.2.7/24`` is ``10.1.2.0/24``), finds the same
  group again. Each carries the tags ``aiores:managed=1`` and ``aiores:ssh_cidr``
  (its ranges, comma-separated) and says its ranges in its description. When aiores
  finds or makes one, it adds the rule if missing and revokes every other ingress
  rule it holds (one added by hand, say): the group's name promises its rule. The
  groups are few (one per rule and VPC) and reused, so aiores never deletes them;
  delete one yourself once no instance uses it. The ``security_group`` option
  names a group of your own instead, used as it is.
- **Host key.** Every RunInstances call gets a fresh ed25519 host key, installed by
  cloud-init (the ``ssh_keys`` section of the user data; the other key types are not
  generated) and published as the instances' ``host_keys``: the first SSH
  connection is verified against it, never trusted on first use. All instances of
  one call share it. The private half travels in the user data, which the account's
  users with ``DescribeInstanceAttribute``, the instance's own processes and a
  DEBUG log of botocore can read: over that first connection each instance makes
  a new host key itself, and the injected one is accepted no more once the
  instance is ACTIVE (see :mod:`aiores_ec2._hostkeys`).
- **User data.** aiores sends MIME multipart user data: the description's
  ``user_data`` as the first part, typed by its first line (``#cloud-config``,
  ``#!`` script, ``#include``, ``#cloud-boothook``, ``## template: jinja``), then
  aiores's cloud-config (host key; ``power_state`` when the description has a
  ``duration``). cloud-init merges cloud-configs in order, so aiores's ``ssh_keys``
  win over any in the user's part. User data that is already MIME is refused.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
from collections.abc import Iterable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import asyncssh

from aiores import BadParameter
from aiores.adaptor import private

__all__ = [
    "MANAGED_KEY",
    "HostKey",
    "key_pair_name",
    "managed_key",
    "new_host_key",
    "ssh_group_name",
    "ssh_ranges",
    "user_data",
]

#: Where the aiores-managed EC2 login key lives, relative to the state directory.
MANAGED_KEY = Path("keys", "ec2_ed25519")
#: The largest user data EC2 accepts (before base64).
MAX_USER_DATA = 16 * 1024


def managed_key(state_dir: Path) -> tuple[Path, str]:
    """Blocking: (private key file, public key text) of the managed key, made on first use.

    The core's managed key (:func:`aiores.adaptor.private.managed_key`) at
    ``<state dir>/keys/ec2_ed25519``: 0600, its ``.pub`` too, its directory 0700; two
    processes making it at once end with one key; a laxer mode is tightened.

    Raises:
        PermissionDenied: the key directory belongs to another user.
    """
    return private.managed_key(state_dir / MANAGED_KEY, "aiores ec2 key")


def key_pair_name(public_key: str) -> str:
    """The EC2 key pair name of a public key: ``aiores-`` and 16 hex digits of its hash."""
    blob = base64.b64decode(public_key.split()[1])
    return "aiores-" + hashlib.sha256(blob).hexdigest()[:16]


def ssh_ranges(ranges: Iterable[str]) -> tuple[str, ...]:
    """Address ranges in one spelling: host bits cleared, duplicates dropped, sorted.

    Raises:
        BadParameter: a range that is not one.
    """
    canonical: set[str] = set()
    for text in ranges:
        try:
            canonical.add(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise BadParameter(f"{text!r} is not an address range") from None
    return tuple(sorted(canonical))


def ssh_group_name(ranges: Iterable[str]) -> str:
    """The security group admitting TCP 22 from exactly ``ranges`` (see the module docstring).

    ``aiores-ssh-`` and 16 hex digits of a hash of the rule, so equal sets of ranges
    (however written) name one group and different sets never share one.
    """
    rule = "tcp 22-22 from " + ",".join(ssh_ranges(ranges))
    return "aiores-ssh-" + hashlib.sha256(rule.encode()).hexdigest()[:16]


class HostKey:
    """A host key made for one RunInstances call."""

    def __init__(self) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.private = key.export_private_key("openssh").decode()
        self.public = key.export_public_key().decode().strip()


def new_host_key() -> HostKey:
    """A fresh ed25519 host key."""
    return HostKey()


_TYPES = (
    ("#cloud-config-archive", "cloud-config-archive"),
    ("#cloud-config", "cloud-config"),
    ("#cloud-boothook", "cloud-boothook"),
    ("#include", "x-include-url"),
    ("#part-handler", "part-handler"),
    ("## template: jinja", "jinja2"),
    ("#!", "x-shellscript"),
)


def _subtype(text: str) -> str:
    head = text.lstrip()[:200]
    if head.lower().startswith(("content-type:", "mime-version:")):
        raise BadParameter(
            "ComputeDescription.user_data is MIME already: ec2:// adds its own part (the "
            "host key), so give the parts one by one (a #cloud-config or a #! script)"
        )
    for prefix, subtype in _TYPES:
        if head.startswith(prefix):
            return subtype
    raise BadParameter(
        "ComputeDescription.user_data must start with #cloud-config, #! (a script), "
        "#include, #cloud-boothook or '## template: jinja' for ec2:// "
        f"(it starts with {head[:30]!r})"
    )


def user_data(host_key: HostKey, user: str | None, duration: float | None) -> str:
    """The MIME multipart user data for one RunInstances call (see the module docstring).

    Raises:
        BadParameter: the user's part is MIME, has no known type, or the whole is
            larger than EC2 accepts.
    """
    config: dict[str, object] = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private,
            "ed25519_public": host_key.public,
        },
    }
    if duration is not None:
        config["power_state"] = {
            "mode": "poweroff",
            "delay": f"+{max(1, math.ceil(duration / 60))}",
            "message": "aiores: the description's duration has passed",
        }
    message = MIMEMultipart()
    if user is not None:
        message.attach(MIMEText(user, _subtype(user)))
    # JSON is YAML: cloud-init reads it as cloud-config.
    ours = "#cloud-config\n" + json.dumps(config, indent=1) + "\n"
    message.attach(MIMEText(ours, "cloud-config"))
    text = message.as_string()
    if len(text.encode()) > MAX_USER_DATA:
        raise BadParameter(
            f"the user data is {len(text.encode())} bytes with aiores's part; EC2 takes "
            f"{MAX_USER_DATA} at most"
        )
    return text
