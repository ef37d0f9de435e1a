"""The control protocol between clients and the cloud process, and where the cloud lives.

The cloud listens on a unix socket in its directory (0700, so only its user reaches
it). Each message is one JSON object on one line:

- request ``{"id": 7, "op": "describe", "args": {"ids": ["vm-..."]}}``;
- response ``{"id": 7, "ok": true, "result": ...}`` or
  ``{"id": 7, "ok": false, "error": "DoesNotExist", "message": "..."}``;
- event ``{"event": "vm", "vm": {...}}``, sent to connections that asked for events
  (``op: "subscribe"``) whenever a VM changes.

Ops: ``hello``, ``subscribe``, ``acquire``, ``describe``, ``find``, ``destroy``,
``list``, ``templates``, ``images``, ``rekey`` (fault injection: a new host key),
``renew`` (a VM's lease), ``set_values`` (provider values; see :mod:`._lease`),
``shutdown``, and the network ops of :mod:`aiores_sim._networks` (whose records
come as events too, with ``"rtype": "network"``).

The cloud's directory (``$AIORES_SIM_DIR``, else ``<state dir>/sim``)::

    cloud.lock    held (flock) by the running cloud: at most one per directory
    cloud.pid     its process id
    cloud.log     what it logs
    control.sock  the control socket (in a private /tmp directory when the path
                  would be too long for a unix socket)
    vms/<id>/     each VM's disk: its login directory, SFTP root
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    NoSuccess,
    NotSupported,
    ResourceState,
)
from aiores.adaptor import ResourceInfo

__all__ = [
    "PROTOCOL_VERSION",
    "cloud_dir",
    "decode_error",
    "encode",
    "encode_error",
    "info_from_json",
    "socket_path",
]

PROTOCOL_VERSION = 1
#: Longest JSON line either side accepts (a describe of thousands of VMs fits).
LINE_LIMIT = 64 * 1024 * 1024
#: Unix socket paths longer than this do not fit in sockaddr_un (108 with the NUL).
_SUN_PATH = 100

_ERRORS: dict[str, type[AioresError]] = {
    cls.__name__: cls for cls in (BadParameter, DoesNotExist, IncorrectState, NotSupported)
}


def cloud_dir(state_dir: Path) -> Path:
    """Where the simulated cloud lives: ``$AIORES_SIM_DIR``, else ``state_dir/sim``."""
    configured = os.environ.get("AIORES_SIM_DIR")
    return Path(configured) if configured else state_dir / "sim"


def socket_path(directory: Path) -> Path:
    """Blocking: the control socket of the cloud in ``directory``.

    A path too long for a unix socket moves to a private directory under the system
    temp directory, named after ``directory`` (both sides compute the same name).
    """
    path = directory.absolute() / "control.sock"
    if len(os.fsencode(path)) <= _SUN_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(directory.absolute())).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"aiores-sim-{os.getuid()}-{digest}"
    try:
        private.mkdir(mode=0o700)
    except FileExistsError:
        info = private.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise NoSuccess(
                f"{private} is not a private directory of this user: refusing to put the "
                "sim cloud's control socket there"
            ) from None
    return private / "control.sock"


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def encode_error(request_id: object, exc: BaseException) -> bytes:
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "NoSuccess"
    return encode({"id": request_id, "ok": False, "error": name, "message": str(exc)})


def decode_error(message: Mapping[str, Any]) -> AioresError:
    """The aiores error a failed response stands for."""
    cls = _ERRORS.get(str(message.get("error")), NoSuccess)
    return cls(str(message.get("message") or "the sim cloud refused the request"))


def info_from_json(data: Mapping[str, Any], login_keys: tuple[str, ...] = ()) -> ResourceInfo:
    """A VM record from the cloud as a :class:`~aiores.adaptor.ResourceInfo`."""
    host_key = data.get("host_key")
    network = data.get("rtype") == "network"
    return ResourceInfo(
        login_keys=() if network else login_keys,
        id=data["id"],
        state=ResourceState[data["state"]],
        state_detail=data.get("detail", ""),
        rtype="network" if network else "compute",
        access=data.get("access"),
        public_address=data.get("address"),
        private_address=data.get("address"),
        tags=frozenset(data.get("tags", ())),
        token=data.get("token"),
        host_keys=(host_key,) if host_key else (),
        extra=dict(data.get("extra", {})),
    )
