"""The SSH connection pool: one per session, shared by every ssh capability object.

Per target (user, host, port, context) it keeps live connections and leases channel
slots on them:

- a request takes a free slot on a live connection (at most ``max_sessions`` channels
  per connection, OpenSSH's MaxSessions default 10); else it joins a connection
  being opened that still has unclaimed slots; else it opens one more connection
  (up to ``max_connections`` per target), else it waits for a slot to free up;
- new handshakes are bounded per target (``SSHContext.max_startups``, below OpenSSH's
  MaxStartups 10) and across the pool (``max_handshakes``);
- a connection the server drops while it is being made (sshd's MaxStartups drops at
  random) is tried again, up to ``_CONNECT_ATTEMPTS`` times;
- a connection that drops is removed at once and never reused; a channel that could
  not be opened on it is retried on another connection (the command never started);
- a refused channel is retried after a short, growing, jittered delay; a server that
  refuses again with as many channels open and none closed in between allows fewer
  than ``max_sessions`` (a lower MaxSessions): that becomes the target's capacity;
- a slot is given back only once its channel has closed, so the pool never counts
  fewer channels on a connection than the server does;
- channel opens pass a :class:`~aiores.adaptor.concurrency.TurnGate`, at most
  ``_OPENS_PER_TURN`` per loop iteration: a thousand runs started at once open their
  channels over many short iterations, not one long one that stalls the loop; what
  the connections receive is handled by turns of another, ``_READS_PER_TURN``
  connections per iteration (:mod:`aiores_ssh._reads`): a thousand commands ending
  at once do not stall it either;
- idle connections are closed after ``idle_timeout`` seconds by a reaper that runs
  in the session's task group;
- once it has opened :data:`~aiores.adaptor.heap.BULK` connections, and again at
  each doubling of that count, the pool holds the heap frozen
  (:func:`~aiores.adaptor.heap.hold`) until it closes: pooled connections are
  thousands of objects each that live as long as the pool, and a full garbage
  collection visiting all of them (tens of milliseconds for 500, on the loop)
  otherwise comes every few fan-outs. The price: the cyclic garbage of connections
  frozen alive and dropped later (idle, lost) is reclaimed only once the heap thaws,
  when the pool (its session) closes.

Connects run in tasks owned by the pool, so a request that is cancelled while a
connection it waits for is being opened leaves that connect to finish for the others.

The pool of a session is a value the session's ssh adaptors share
(:meth:`~aiores.adaptor.AdaptorEnv.shared`, see :func:`pool_for`): the session closes
it after its adaptors, once the cleanups of cancelled calls (stopping a command,
closing a channel: run through the session's :attr:`~aiores.adaptor.AdaptorEnv.cleanups`,
which it drains first) no longer need its connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh

from aiores import (
    AioresError,
    AuthenticationFailed,
    ConnectionLost,
    HostKeyError,
    IncorrectState,
    NoSuccess,
    SSHContext,
)
from aiores.adaptor import AdaptorEnv, concurrency, heap

from ._errors import map_errors, translate
from ._hostkeys import HostKeyPolicy, SSHClient, build_options
from ._reads import take_turns

__all__ = ["Lease", "Pool", "Target", "pool_for"]

T = TypeVar("T")

#: How often a channel is tried before its error is raised.
_OPEN_ATTEMPTS = 8
#: How often a connection the server dropped while it was being made is tried.
_CONNECT_ATTEMPTS = 3
#: Seconds before the first retry of a refused channel (doubling, jittered).
_RETRY_DELAY = 0.01
#: Seconds between two refusals at one channel count for them to show a limit.
_SETTLE = 0.02
#: How long closing a connection may take before it is abandoned.
_CLOSE_TIMEOUT = 5.0
#: How long an abandoned channel open may take before its connection is dropped.
_OPEN_WAIT = 10.0
#: Channel opens started per loop iteration (each costs the loop ~0.1 ms).
_OPENS_PER_TURN = 16
#: Connections whose arrived bytes are handled per loop iteration (0.1-0.3 ms each
#: when a command's answers come in: see :mod:`aiores_ssh._reads`).
_READS_PER_TURN = 32


@dataclass(frozen=True, slots=True)
class Target:
    """Where a connection goes; connections are shared only within one target."""

    host: str
    port: int
    user: str | None
    context: SSHContext = field(compare=False, hash=False)
    context_id: int = 0

    @classmethod
    def make(cls, host: str, port: int | None, user: str | None, ctx: SSHContext) -> Target:
        return cls(host, port or 22, user or ctx.user, ctx, id(ctx))

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Conn:
    """One pooled connection and its channel bookkeeping."""

    def __init__(self, conn: asyncssh.SSHClientConnection, capacity: int, now: float) -> None:
        self.conn = conn
        self.capacity = capacity
        self.in_use = 0
        self.dead = False
        self.last_used = now
        self.tunnel: Lease | None = None
        #: Channels being opened on it, open (not yet closed), and closed so far.
        self.opening = 0
        self.open = 0
        self.closes = 0
        #: (channels open, closes, time) of the first refusal at that count.
        self.refused_at: tuple[int, int, float] | None = None

    @property
    def free(self) -> bool:
        return not self.dead and self.in_use < self.capacity

    def refused(self, now: float) -> int | None:
        """Note a refused channel; the server's channel limit, once it is clear.

        A refusal can be transient (the server has not yet freed a channel that just
        closed), and while other opens are under way the count of open channels
        lags behind the server's. Only a refusal with no other open under way, as
        many channels open as at an earlier such refusal at least ``_SETTLE``
        seconds before, and none closed in between, shows the server's limit.
        """
        if self.opening:
            return None
        count = (self.open, self.closes)
        if self.refused_at is None or self.refused_at[:2] != count:
            self.refused_at = (*count, now)
            return None
        settled = now - self.refused_at[2] >= _SETTLE
        return self.open if settled and self.open >= 1 else None


class Lease:
    """One channel slot on a pooled connection, held until :meth:`release`.

    The holder releases it once its channel has closed, so the pool's count of a
    connection's channels never runs below the server's.
    """

    __slots__ = ("_pool", "opened", "pooled", "released", "target")

    def __init__(self, pool: Pool, target: Target, pooled: _Conn) -> None:
        self._pool = pool
        self.target = target
        self.pooled = pooled
        self.released = False
        self.opened = False
        pooled.in_use += 1
        pooled.last_used = pool._now()

    def _opened(self) -> None:
        self.opened = True
        self.pooled.open += 1
        self.pooled.refused_at = None

    @property
    def conn(self) -> asyncssh.SSHClientConnection:
        return self.pooled.conn

    @property
    def alive(self) -> bool:
        """False once the connection is known to be dead."""
        return not (self.pooled.dead or self.pooled.conn.is_closed())

    def release(self) -> None:
        """Give the slot back (again: no effect)."""
        if not self.released:
            self.released = True
            if self.opened:
                self.pooled.open -= 1
                self.pooled.closes += 1
            self._pool._unlease(self.target, self.pooled)


class _Pending:
    """A connection being opened and the requests counting on it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.claims = 0
        self.done: asyncio.Future[AioresError | None] = asyncio.get_running_loop().create_future()
        #: The connection, once open.
        self.conn: _Conn | None = None


class _TargetState:
    def __init__(self, ctx: SSHContext) -> None:
        self.live: list[_Conn] = []
        self.pending: list[_Pending] = []
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.startups = asyncio.Semaphore(ctx.max_startups)
        #: Channels per connection: the context's max_sessions, or less if the
        #: server refused a channel below it.
        self.capacity = ctx.max_sessions

    def take(self) -> _Conn | None:
        best: _Conn | None = None
        for pooled in self.live:
            # Fill the busiest connection first so idle ones can be reaped.
            if pooled.free and (best is None or pooled.in_use > best.in_use):
                best = pooled
        return best

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Pool:
    """SSH connections of one session, shared by its ssh adaptors.

    Args:
        env: The session's adaptor environment (clock, spawn, cleanups).
        max_handshakes: New SSH handshakes in flight across the pool.
        max_connections: Connections per target; past it, requests wait for a channel.
        idle_timeout: Seconds after which an unused connection is closed.
    """

    def __init__(
        self,
        env: AdaptorEnv,
        *,
        max_handshakes: int = 64,
        max_connections: int = 64,
        idle_timeout: float = 60.0,
    ) -> None:
        self._env = env
        #: The session's clock, as it is read on every lease and release.
        self._now = env.clock.now
        self._max_handshakes = max_handshakes
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._targets: dict[Target, _TargetState] = {}
        self._options: dict[
            int, tuple[SSHContext, asyncssh.SSHClientConnectionOptions, HostKeyPolicy]
        ] = {}
        self._options_lock = asyncio.Lock()
        self._login_keys: dict[str, asyncssh.SSHKey] = {}
        self._jump_contexts: dict[int, SSHContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._opens = concurrency.TurnGate(_OPENS_PER_TURN)
        self._reads = concurrency.TurnGate(_READS_PER_TURN)
        self._reaper_started = False
        self._closed = False
        #: Connections opened so far (for tests and benchmarks).
        self.connects = 0
        #: Connections opened at which the pool next holds the heap frozen.
        self._next_hold = heap.BULK

    @property
    def max_handshakes(self) -> int:
        """New SSH handshakes in flight across the pool (set it before connecting)."""
        return self._max_handshakes

    @max_handshakes.setter
    def max_handshakes(self, value: int) -> None:
        if self._tasks:
            raise IncorrectState("max_handshakes can only change while nothing connects")
        self._max_handshakes = value
        self._handshakes = asyncio.Semaphore(value)

    @property
    def closed(self) -> bool:
        """True once the pool is closed (its session is over)."""
        return self._closed

    @property
    def cleanups(self) -> concurrency.Cleanups:
        """Where cleanups that need the pool's connections run: the session's cleanups,
        which the session drains before it closes the pool."""
        return self._env.cleanups

    # -- leasing channels -----------------------------------------------------------
    async def channel(
        self,
        target: Target,
        opener: Callable[[asyncssh.SSHClientConnection], Coroutine[Any, Any, T]],
        abandon: Callable[[Lease, T], Awaitable[None]],
    ) -> tuple[Lease, T]:
        """Lease a channel slot on a connection to ``target`` and run ``opener`` on it.

        ``opener`` opens the channel (a process, an SFTP session). If the server refuses
        the channel, or the connection turns out to be dead before the channel opened,
        the slot is retried on another connection. The caller releases the lease once
        the channel has closed.

        Cancelling it while ``opener`` runs lets the opening finish (bounded: a server
        that does not answer loses its connection) and then undoes it with
        ``abandon(lease, result)``, which must close the channel and release the lease;
        that cleanup runs in :attr:`cleanups` (shielded, bounded) and is awaited before
        the cancellation propagates.

        Raises:
            HostKeyError, AuthenticationFailed, Timeout, NoSuccess, ConnectionLost:
                connecting or opening the channel failed.
        """
        attempts = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._opens.turn()
            lease = self._free_lease(target) or await self._lease(target)
            pooled = lease.pooled
            opening = loop.create_task(opener(pooled.conn))
            pooled.opening += 1
            # Shielded: a cancelled caller cancels only ``opened``, leaving the open to
            # finish for the cleanup to undo what it made (the open is not a cleanup
            # itself). One callback counts the open done and wakes the caller: one
            # loop callback per open where asyncio.shield takes two and a wrapper.
            opened = loop.create_future()
            opening.add_done_callback(functools.partial(_opened, pooled, opened))
            try:
                await opened
                result = opening.result()
            except asyncio.CancelledError:
                await self.cleanups.run(
                    functools.partial(self._abandon, lease, opening, abandon),
                    what=f"abandoning a channel being opened to {target.where}",
                )
                raise
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, OSError) as exc:
                pooled = lease.pooled
                lease.release()
                if not lease.alive:
                    self._drop(target, pooled)
                elif isinstance(exc, asyncssh.ChannelOpenError):
                    limit = pooled.refused(self._env.clock.now())
                    if limit is not None:
                        # The server allows fewer channels than we assumed (MaxSessions):
                        # remember its limit for this target's connections, new ones too.
                        self._learn_capacity(target, limit)
                else:
                    raise translate(exc, target.where, "opening a channel") from exc
                attempts += 1
                if attempts >= _OPEN_ATTEMPTS:
                    raise translate(exc, target.where, "opening a channel") from exc
                # Jittered backoff: a transient refusal passes, and retries spread out.
                await self._env.clock.sleep(_RETRY_DELAY * 2**attempts * random.uniform(0.5, 1))
                continue
            except BaseException:
                lease.release()
                raise
            lease._opened()
            return lease, result

    async def urgent(
        self,
        target: Target,
        opener: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
        near: Lease | None = None,
    ) -> tuple[Lease, T]:
        """:meth:`channel` ahead of every queued request, for stopping a command.

        Tried in turn: ``near``'s connection beyond its slot count (asyncssh servers
        allow it; OpenSSH refuses past MaxSessions), any live connection with a free
        slot, then a connection being opened, or one opened for it outside
        ``max_connections`` (a slot on it is taken whatever its count). Used when
        the slots are held by the very commands being stopped, which would otherwise
        wait for themselves.

        Raises:
            HostKeyError, AuthenticationFailed, Timeout, NoSuccess, ConnectionLost:
                no channel could be opened.
        """
        state = self._state(target)
        tried: list[_Conn] = []
        if near is not None and near.alive:
            tried.append(near.pooled)
        tried.extend(pooled for pooled in state.live if pooled.free and pooled not in tried)
        for pooled in tried:
            if pooled.dead or pooled.conn.is_closed():
                continue
            lease = Lease(self, target, pooled)
            try:
                result = await opener(pooled.conn)
                lease._opened()
                return lease, result
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, OSError):
                lease.release()  # refused (or gone): the next way
            except BaseException:
                lease.release()
                raise
        if self._closed:
            raise NoSuccess(f"the SSH pool is closed (session over) for {target.where}")
        pending = next((p for p in state.pending if p.claims < p.capacity), None)
        if pending is None:
            pending = self._start_connect(target, state, state.capacity)
        pending.claims += 1
        # Shielded: others wait on this connect, too (a shared future, not a cleanup).
        failed = await asyncio.shield(pending.done)
        if failed is not None:
            raise _fresh(failed)
        assert pending.conn is not None
        lease = Lease(self, target, pending.conn)
        try:
            result = await opener(lease.conn)
            lease._opened()
            return lease, result
        except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, OSError) as exc:
            lease.release()
            raise translate(exc, target.where, "opening a channel") from exc
        except BaseException:
            lease.release()
            raise

    async def _abandon(
        self,
        lease: Lease,
        opening: asyncio.Future[T],
        abandon: Callable[[Lease, T], Awaitable[None]],
    ) -> None:
        try:
            done, _ = await asyncio.wait({opening}, timeout=_OPEN_WAIT)
            if not done:
                # The server has not answered the open: a connection it will not
                # answer on is no use, and closing it frees what the open made.
                opening.cancel()
                self._drop(lease.target, lease.pooled)
                return
            if opening.cancelled() or opening.exception() is not None:
                return  # nothing was opened
            lease._opened()
            await abandon(lease, opening.result())
        finally:
            lease.release()

    def _state(self, target: Target) -> _TargetState:
        state = self._targets.get(target)
        if state is None:
            state = self._targets[target] = _TargetState(target.context)
        return state

    def _free_lease(self, target: Target) -> Lease | None:
        """A free slot on a live connection to ``target`` at once, if there is one
        (else :meth:`_lease` waits for one)."""
        state = self._targets.get(target)
        if state is None or self._closed:
            return None
        pooled = state.take()
        return Lease(self, target, pooled) if pooled is not None else None

    async def _lease(self, target: Target) -> Lease:
        state = self._state(target)
        while True:
            if self._closed:
                raise NoSuccess(f"the SSH pool is closed (session over) for {target.where}")
            pooled = state.take()
            if pooled is not None:
                return Lease(self, target, pooled)
            pending = next((p for p in state.pending if p.claims < p.capacity), None)
            if pending is None and len(state.live) + len(state.pending) < self.max_connections:
                pending = self._start_connect(target, state, state.capacity)
            if pending is not None:
                pending.claims += 1
                # Shielded: others wait on this connect, too (a shared future, not a
                # cleanup); a cancelled waiter must not cancel it for them.
                error = await asyncio.shield(pending.done)
                if error is not None:
                    raise _fresh(error)
                continue
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    state.wake()  # pass the wake-up on
                raise

    def _learn_capacity(self, target: Target, capacity: int) -> None:
        state = self._targets.get(target)
        if state is None:
            return
        state.capacity = min(state.capacity, max(1, capacity))
        for pooled in state.live:
            pooled.capacity = min(pooled.capacity, state.capacity)
        for pending in state.pending:
            pending.capacity = min(pending.capacity, state.capacity)

    def _unlease(self, target: Target, pooled: _Conn) -> None:
        pooled.in_use -= 1
        pooled.last_used = self._now()
        state = self._targets.get(target)
        if state is not None:
            state.wake()

    def _drop(self, target: Target, pooled: _Conn, *, graceful: bool = False) -> None:
        """Forget a connection (dead or idle): it is never leased again."""
        pooled.dead = True
        state = self._targets.get(target)
        if state is not None and pooled in state.live:
            state.live.remove(pooled)
            state.wake()
        if graceful:
            pooled.conn.close()
        else:
            pooled.conn.abort()

    # -- connecting ------------------------------------------------------------------
    def _start_connect(self, target: Target, state: _TargetState, capacity: int) -> _Pending:
        pending = _Pending(capacity)
        state.pending.append(pending)
        task = asyncio.create_task(
            self._connect(target, state, pending), name=f"aiores-ssh-connect {target.where}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    async def _connect(self, target: Target, state: _TargetState, pending: _Pending) -> None:
        error: AioresError | None = None
        tunnel: Lease | None = None
        try:
            if target.context.jump_host:
                # The jump connection is leased before any handshake slot is taken:
                # opening it needs a slot of its own, so holding one while waiting
                # for it would deadlock once every slot waits on the jump host.
                tunnel = await self._jump(target)
            # Per host first: connects queued behind a host's own bound must not hold
            # session-wide slots, or one unreachable host stalls every other host.
            async with state.startups, self._handshakes:
                pooled = await self._handshake_again(target, tunnel)
            tunnel = None  # the connection holds it now, until it is lost
            state.live.append(pooled)
            pending.conn = pooled
            self.connects += 1
            if self.connects >= self._next_hold:
                self._next_hold = 2 * self.connects
                heap.hold(self, self._env)  # the session's close lets go, too
            self._start_reaper()
        except AioresError as exc:
            error = exc
        except Exception as exc:  # a failure no mapping names: still each waiter's error
            error = NoSuccess(f"connecting to {target.where} failed: {exc!r}")
            error.__cause__ = exc
        except asyncio.CancelledError:
            error = NoSuccess(f"the SSH pool closed while connecting to {target.where}")
            raise
        finally:
            if tunnel is not None:
                tunnel.release()
            state.pending.remove(pending)
            pending.done.set_result(error)
            state.wake()

    async def _handshake_again(self, target: Target, tunnel: Lease | None) -> _Conn:
        """:meth:`_handshake`, again after a short, growing, jittered pause when the
        server dropped the connection before it was made: sshd drops new connections
        at random past its MaxStartups (or a busy one is slow to count finished
        logins), which passes; at most ``_CONNECT_ATTEMPTS`` tries."""
        attempt = 1
        while True:
            try:
                return await self._handshake(target, tunnel)
            except ConnectionLost:
                if attempt >= _CONNECT_ATTEMPTS or self._closed:
                    raise
            await self._env.clock.sleep(_RETRY_DELAY * 2**attempt * random.uniform(0.5, 1))
            attempt += 1

    async def _login_key(self, path: str) -> asyncssh.SSHKey:
        """A private key named by a backend, read once (off the loop) and kept."""
        key = self._login_keys.get(path)
        if key is None:
            try:
                key = await asyncio.to_thread(asyncssh.read_private_key, path)
            except (OSError, asyncssh.KeyImportError) as exc:
                raise AuthenticationFailed(
                    f"cannot read the login key {path} that the backend named: {exc}"
                ) from exc
            self._login_keys[path] = key
        return key

    async def _handshake(self, target: Target, tunnel: Lease | None) -> _Conn:
        options, policy = await self._options_for(target.context)
        client: SSHClient | None = None

        def factory() -> SSHClient:
            nonlocal client
            client = SSHClient(policy)
            return client

        kwargs: dict[str, Any] = {"options": options, "client_factory": factory}
        if target.user:
            kwargs["username"] = target.user
        logins = self._env.login_keys(target.host, target.port)
        if logins:
            # The backend that made this machine authorized these keys for it: offer
            # them (and the agent's), not the context's defaults.
            kwargs["client_keys"] = [await self._login_key(path) for path in logins]
        algs = policy.host_key_algs(target.host, target.port)
        if algs:
            kwargs["server_host_key_algs"] = algs
        if tunnel is not None:
            kwargs["tunnel"] = tunnel.conn
        with map_errors(target.where, "connecting"):
            try:
                conn = await asyncssh.connect(target.host, target.port, **kwargs)
            except asyncssh.HostKeyNotVerifiable as exc:
                reason = client.refusal if client is not None else None
                raise HostKeyError(
                    f"host key of {target.where} not trusted: {reason or exc.reason}"
                ) from exc
        try:
            await policy.flush()
        except BaseException as exc:
            conn.close()  # nobody else holds it: it would stay open for good
            if isinstance(exc, OSError):
                raise NoSuccess(
                    f"could not record the host key of {target.where}, accepted on first "
                    f"use, in {policy.record_file}: {exc}"
                ) from exc
            raise
        assert client is not None
        take_turns(conn, self._reads)
        state = self._targets.get(target)
        capacity = state.capacity if state is not None else target.context.max_sessions
        pooled = _Conn(conn, capacity, self._env.clock.now())
        pooled.tunnel = tunnel
        client.lost.add_done_callback(lambda _: self._on_lost(target, pooled))
        return pooled

    async def _jump(self, target: Target) -> Lease:
        """A leased slot on a connection to the context's jump host (for a tunnel)."""
        spec = target.context.jump_host or ""
        user, _, hostport = spec.rpartition("@")
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit():
            host, port = hostport, "22"
        ctx = self._jump_contexts.get(id(target.context))
        if ctx is None:
            ctx = dataclasses.replace(target.context, jump_host=None)
            self._jump_contexts[id(target.context)] = ctx
        jump = Target.make(host.strip("[]"), int(port), user or None, ctx)
        if (jump.host, jump.port) == (target.host, target.port):
            raise NoSuccess(f"{target.where} names itself as its jump host")
        return await self._lease(jump)

    def _on_lost(self, target: Target, pooled: _Conn) -> None:
        pooled.dead = True
        state = self._targets.get(target)
        if state is not None and pooled in state.live:
            state.live.remove(pooled)
            state.wake()
        if pooled.tunnel is not None:
            tunnel, pooled.tunnel = pooled.tunnel, None
            tunnel.release()

    async def _options_for(
        self, ctx: SSHContext
    ) -> tuple[asyncssh.SSHClientConnectionOptions, HostKeyPolicy]:
        # Keyed by identity (contexts hold dicts, so they do not hash); the context is
        # kept in the value so its id cannot be reused while the entry lives.
        entry = self._options.get(id(ctx))
        if entry is None:
            async with self._options_lock:
                entry = self._options.get(id(ctx))
                if entry is None:
                    entry = self._options[id(ctx)] = (
                        ctx,
                        *await build_options(ctx, self._env.pinned_host_keys),
                    )
        return entry[1], entry[2]

    # -- idle connections and closing -------------------------------------------------
    def _start_reaper(self) -> None:
        if self._reaper_started or self._closed:
            return
        try:
            self._env.spawn(self._reap_idle, name="aiores-ssh-idle-reaper")
        except AioresError:  # the session is closing: it closes the pool, too
            return
        self._reaper_started = True

    async def _reap_idle(self) -> None:
        clock = self._env.clock
        while not self._closed:
            await clock.sleep(max(self.idle_timeout / 4, 0.05))
            now = clock.now()
            for target, state in list(self._targets.items()):
                for pooled in list(state.live):
                    if pooled.in_use == 0 and now - pooled.last_used >= self.idle_timeout:
                        self._drop(target, pooled, graceful=True)

    def live_connections(self, target: Target | None = None) -> int:
        """How many live connections the pool holds (to ``target``, or in all)."""
        if target is None:
            return sum(len(state.live) for state in self._targets.values())
        state = self._targets.get(target)
        return len(state.live) if state is not None else 0

    def capacity(self, target: Target) -> int:
        """Channels per connection to ``target`` (less than asked if the server refused)."""
        return self._state(target).capacity

    def channels_in_use(self, target: Target | None = None) -> int:
        """How many channel slots are leased (to ``target``, or in all)."""
        states = self._targets.values() if target is None else [self._state(target)]
        return sum(pooled.in_use for state in states for pooled in state.live)

    async def aclose(self) -> None:
        """Close every connection and stop connecting (waiting for them is bounded).

        The session calls it when it closes, after its adaptors and after the
        cleanups that needed the pool's connections.
        """
        if self._closed:
            return
        self._closed = True
        heap.release(self)  # its connections go: what was frozen may be garbage now
        try:
            await self._close()
        finally:
            # What a closed pool remembers goes with it.
            self._targets.clear()
            self._options.clear()
            self._jump_contexts.clear()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        conns: list[asyncssh.SSHClientConnection] = []
        for state in self._targets.values():
            conns.extend(pooled.conn for pooled in state.live)
            for waiter in state.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            state.live.clear()
        for conn in conns:
            conn.close()
        closing = [conn.wait_closed() for conn in conns]
        if closing or self._tasks:
            async with concurrency.move_on_after(_CLOSE_TIMEOUT):
                await asyncio.gather(*closing, *self._tasks, return_exceptions=True)


def _opened(pooled: _Conn, opened: asyncio.Future[None], _: object) -> None:
    """A channel open on ``pooled`` ended (opened or not): wake its caller."""
    pooled.opening -= 1
    if not opened.done():  # cancelled if the caller was
        opened.set_result(None)


def _fresh(error: AioresError) -> AioresError:
    """A new instance of a shared error, so each waiter raises its own."""
    try:
        copy = type(error)(*error.args)
    except TypeError:
        return error
    copy.__cause__ = error.__cause__
    return copy


def pool_for(env: AdaptorEnv) -> Pool:
    """The connection pool of ``env``'s session, shared by its ssh adaptors.

    Made on first use; the session closes it when it closes (after its adaptors).

    Raises:
        IncorrectState: the session's pool is closed (the session is over).
    """
    pool = env.shared(Pool, lambda: Pool(env))
    if pool.closed:
        raise IncorrectState("the SSH pool of this session is closed")
    return pool
