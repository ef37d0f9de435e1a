"""Which sessions reap counts as gone: over without closing, on this host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from aiores._recover import SessionRecord, _gone_sessions

HOST = socket.gethostname()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_gone_sessions() -> None:
    now = time.time()
    me = os.getpid()
    dead = _dead_pid()
    records = [
        SessionRecord("s-me", me, HOST, now, None),  # the reaping session itself
        SessionRecord("s-alive", me, HOST, now - 1, None),  # another one of a live process
        SessionRecord("s-closed", dead, HOST, now - 5, now - 4),  # closed normally
        SessionRecord("s-killed", dead, HOST, now - 5, None),  # its process ended
        SessionRecord("s-elsewhere", dead, "another-host", now - 5, None),  # cannot tell
        SessionRecord("s-reused", me, HOST, 1.0, None),  # its pid now runs a later process
    ]
    assert _gone_sessions(records, "s-me") == {"s-killed", "s-reused"}
