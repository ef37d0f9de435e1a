"""What every ssh capability object shares: its target and the session's pool."""

from __future__ import annotations

from aiores import SSHContext
from aiores.adaptor import Adaptor

from ._pool import Pool, Target, pool_for

__all__ = ["SSHBase"]

#: The context of endpoints the session has none for: one object, so that they share
#: one set of connection options (keys, known_hosts, algorithms: built once per pool,
#: which keys them by context) and connections to one host are pooled together.
_DEFAULT_CONTEXT = SSHContext()


class SSHBase(Adaptor):
    """An ssh capability bound to one ``ssh://[user@]host[:port]`` endpoint."""

    _pool: Pool | None = None
    _target: Target | None = None

    async def open(self) -> None:
        """Join the session's connection pool (connections open on first use)."""
        self._endpoint()

    def _endpoint(self) -> tuple[Pool, Target]:
        if self._pool is None or self._target is None:
            ctx = self.env.context(SSHContext, self.url.host) or _DEFAULT_CONTEXT
            self._target = Target.make(self.url.host, self.url.port, self.url.user, ctx)
            self._pool = pool_for(self.env)
        return self._pool, self._target

    @property
    def pool(self) -> Pool:
        """The session's SSH connection pool."""
        return self._endpoint()[0]

    @property
    def target(self) -> Target:
        """Where this object connects."""
        return self._endpoint()[1]

    async def aclose(self) -> None:
        """Let go of the pool: the session closes it once all its adaptors are closed."""
        self._pool = None
