"""Host key rotation: the key sent in the user data stops mattering once SSH answers.

The user data carries an instance's first host key, private half included, and it
can be read by more than the instance (``DescribeInstanceAttribute``, the metadata
service, botocore's DEBUG log of the RunInstances body). So over the first connection
verified against that key, before the instance turns ACTIVE, aiores has the instance
make a new ed25519 host key for itself and reads back only its public half:

1. **prepare** (as root, through ``sudo -n`` unless the login user is root):
   ``ssh-keygen`` writes ``/etc/ssh/ssh_host_ed25519_key.aiores-next`` unless it
   exists (made under a temporary name and linked into place, so two clients at once
   agree on one key); its public key is printed.
2. aiores records that key in ``<state dir>/ec2/hostkeys/<instance id>`` (0600): from
   then on the instance is verified against either key, so a crash between the two
   steps leaves it reachable.
3. **switch**: the new key replaces ``/etc/ssh/ssh_host_ed25519_key`` (where
   cloud-init wrote the injected one, which is thereby removed) unless it did
   already, sshd reloads (``systemctl reload sshd`` or ``ssh``, else a HUP to the pid
   in ``/run/sshd.pid``; every time, so that a switch cut short before the reload
   is completed by the next), and the public key of the key now in place is
   printed.
4. aiores records the new key alone and pins it in the session: the injected key is no
   longer accepted, by aiores or by the instance.

Instances are reached with the recorded key by any session sharing the state
directory; elsewhere (another machine) the ``aiores:hostkey`` tag still names the
injected key, which such a session refuses once the instance shows its new one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from aiores import NoSuccess
from aiores.adaptor import CommandRunner, private

__all__ = [
    "HOSTKEYS",
    "PREPARE",
    "SWITCH",
    "HostKeyRecord",
    "HostKeys",
    "write_private",
]

#: Where rotated host keys are recorded, relative to the state directory.
HOSTKEYS = Path("ec2", "hostkeys")
#: Seconds each rotation step may take on the instance.
STEP_TIMEOUT = 60.0

#: Runs what it reads on its input as root (the login user may not be root).
AS_ROOT = 'if [ "$(id -u)" = 0 ]; then exec sh -s; else exec sudo -n sh -s; fi'

_KEY = "k=/etc/ssh/ssh_host_ed25519_key\nn=$k.aiores-next\numask 077\nset -e\n"

PREPARE = (
    _KEY
    + """if [ ! -s "$n" ]; then
  t=$n.$$
  rm -f "$t" "$t.pub"
  ssh-keygen -q -t ed25519 -N '' -C '' -f "$t" </dev/null >/dev/null
  ln "$t" "$n" 2>/dev/null || true
  rm -f "$t" "$t.pub"
fi
ssh-keygen -y -f "$n"
"""
)

SWITCH = (
    _KEY
    + """if mv -f "$n" "$k" 2>/dev/null; then
  ssh-keygen -y -f "$k" >"$k.pub.$$"
  chmod 644 "$k.pub.$$"
  mv -f "$k.pub.$$" "$k.pub"
  command -v restorecon >/dev/null 2>&1 && restorecon "$k" "$k.pub" || true
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl reload sshd 2>/dev/null || systemctl reload ssh
else
  p=$(cat /run/sshd.pid 2>/dev/null || cat /var/run/sshd.pid)
  kill -HUP "$p"
fi
ssh-keygen -y -f "$k"
"""
)


def write_private(path: Path, text: str) -> None:
    """Blocking: replace ``path`` with ``text`` atomically, 0600, its directory 0700.

    The core's private files (:mod:`aiores.adaptor.private`), whatever the umask.
    """
    private.private_dir(path.parent)
    private.private_file(path, text)


def _public(text: str) -> str:
    """``type base64`` of the one public key in ``text`` (a command's output)."""
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise NoSuccess(f"the instance printed no host key but {text[:200]!r}") from exc
    if key.get_algorithm() != "ssh-ed25519":
        raise NoSuccess(f"the instance printed a {key.get_algorithm()} key, not ssh-ed25519")
    key.set_comment(None)
    return key.export_public_key().decode().strip()


@dataclass(frozen=True, slots=True)
class HostKeyRecord:
    """What is known of one instance's host keys beyond the injected one."""

    #: The injected key (the ``aiores:hostkey`` tag) the record belongs to.
    boot: str
    #: The key the instance made for itself.
    new: str
    #: True once the instance shows ``new`` and the injected key is gone.
    rotated: bool

    def keys(self) -> tuple[str, ...]:
        """The keys the instance may show: both while the switch is under way."""
        return (self.new,) if self.rotated else (self.boot, self.new)


class HostKeys:
    """The recorded host keys of one state directory's instances (see the module doc)."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / HOSTKEYS
        self._records: dict[str, HostKeyRecord] = {}
        self._mtime: int | None = None
        #: Bumped by every change made here, so that a read begun before it is dropped.
        self._changes = 0
        self._locks: dict[str, asyncio.Lock] = {}

    # -- reading ------------------------------------------------------------------------
    def keys(self, instance_id: str, boot: str) -> tuple[str, ...]:
        """The host keys to pin for an instance whose injected key is ``boot``."""
        record = self._records.get(instance_id)
        if record is None or record.boot != boot:  # none, or of an id used before
            return (boot,)
        return record.keys()

    async def refresh(self) -> None:
        """Read the records again if another session changed them (off the loop)."""
        changes = self._changes
        loaded = await asyncio.to_thread(self._load, self._mtime)
        # A record changed here meanwhile is newer than what was read: keep it (the
        # next refresh reads the directory again, its time having changed).
        if loaded is not None and changes == self._changes:
            self._mtime, self._records = loaded

    def _load(self, known: int | None) -> tuple[int, dict[str, HostKeyRecord]] | None:
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == known:
            return None
        records: dict[str, HostKeyRecord] = {}
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                continue
            try:
                data = json.loads(path.read_text())
                records[path.name] = HostKeyRecord(
                    str(data["boot"]), str(data["new"]), bool(data["rotated"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written by an older version, or not ours: ignored
        return mtime, records

    # -- writing ------------------------------------------------------------------------
    async def _record(self, instance_id: str, record: HostKeyRecord | None) -> None:
        self._changes += 1
        if record is None:
            self._records.pop(instance_id, None)
        else:
            self._records[instance_id] = record
        await asyncio.to_thread(self._write, instance_id, record)

    def _write(self, instance_id: str, record: HostKeyRecord | None) -> None:
        path = self.directory / instance_id
        if record is None:
            path.unlink(missing_ok=True)
            return
        data = {"boot": record.boot, "new": record.new, "rotated": record.rotated}
        write_private(path, json.dumps(data, indent=1) + "\n")

    async def forget(self, instance_ids: list[str]) -> None:
        """Drop the records of terminated instances."""
        self._changes += 1
        for instance_id in instance_ids:
            self._records.pop(instance_id, None)
            self._locks.pop(instance_id, None)

        def unlink() -> None:
            for instance_id in instance_ids:
                (self.directory / instance_id).unlink(missing_ok=True)

        await asyncio.to_thread(unlink)

    # -- rotating -------------------------------------------------------------------------
    async def rotate(self, instance_id: str, boot: str, runner: CommandRunner) -> str:
        """Rotate the host key of an instance reached through ``runner``; its new key.

        ``runner`` must reach it over a connection verified against the keys
        :meth:`keys` gives. Safe to repeat, and to call from several sessions at once.

        Raises:
            NoSuccess: a step failed on the instance (no ``sudo``, no ``ssh-keygen``,
                sshd not found to reload), or it shows another key than it made.
            AioresError: the connection failed.
        """
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            record = self._records.get(instance_id)
            if record is not None and record.boot != boot:
                record = None
            if record is not None and record.rotated:
                return record.new
            if record is None:
                new = _public(await self._step(runner, PREPARE, "make a new host key"))
                record = HostKeyRecord(boot, new, rotated=False)
                await self._record(instance_id, record)
            shown = _public(await self._step(runner, SWITCH, "switch to the new host key"))
            if shown != record.new:
                # The prepared key was lost (the instance was rebuilt?): start again.
                await self._record(instance_id, None)
                raise NoSuccess(
                    f"instance {instance_id} shows another host key than the one it made"
                )
            await self._record(instance_id, HostKeyRecord(boot, shown, rotated=True))
            return shown

    async def _step(self, runner: CommandRunner, script: str, what: str) -> str:
        result = await runner.run(AS_ROOT, stdin=script.encode(), timeout=STEP_TIMEOUT)
        if result.exit_status != 0:
            raise NoSuccess(
                f"could not {what} on the instance (exit {result.exit_status}): "
                f"{result.stderr[-500:]}"
            )
        return result.stdout
