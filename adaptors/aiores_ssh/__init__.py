"""aiores over SSH (asyncssh): a pooled command runner, a job service and SFTP files.

``ssh://[user@]host[:port]`` URLs (and ``any://host``) reach a machine through the
session's connection pool; credentials and host keys come from the session's
:class:`aiores.SSHContext`. See :mod:`aiores_ssh._pool` for how connections are
shared and bounded, and :mod:`aiores_ssh._errors` for how errors are mapped.

A command runs in the account's login shell, as ``ssh host command`` does, after
two lines of aiores's own (the run's mark in its environment, and its input):
the login shell must be a POSIX shell (sh, dash, bash, zsh, ksh, busybox sh), as
job scripts need one too; fish or tcsh as login shell is not supported.
"""

from __future__ import annotations

from ._files import SSHFileAdaptor
from ._hostkeys import CIPHERS
from ._jobs import SSHJobAdaptor
from ._plugin import SSHPlugin, plugin
from ._pool import Pool, Target, pool_for
from ._runner import CommandTimeout, SSHCommandRunner

__all__ = [
    "CIPHERS",
    "CommandTimeout",
    "Pool",
    "SSHCommandRunner",
    "SSHFileAdaptor",
    "SSHJobAdaptor",
    "SSHPlugin",
    "Target",
    "plugin",
    "pool_for",
]
