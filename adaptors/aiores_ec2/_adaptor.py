"""The ``ec2://`` resource manager: instances launched in batches, watched in batches.

- **Acquire** is one ``RunInstances`` per batch (``MinCount = MaxCount = count``, at
  most ``batch`` instances a call), with the core's idempotency token as
  ``ClientToken`` and as the tag ``aiores:token``. The call runs in a task of its
  own: cancelling the acquire does not cut the request off mid-air, and the cleanup
  (:meth:`EC2ResourceAdaptor.find`) waits for its answer, then also asks EC2 for the
  instances tagged with the token. A cancel or crash between the call and its answer
  therefore leaks nothing.
- **Tags.** Every instance carries ``aiores:managed=1``, ``aiores:session``,
  ``aiores:token``, ``aiores:user`` (the login name), ``aiores:hostkey`` (the
  public half of the host key injected at boot), ``aiores:expires`` when the
  description has a duration, and
  one tag ``aiores:tag:<name>=1`` per description tag (select them in the console
  with ``tag-key``).
- **States.** ``pending`` is PENDING; ``running`` is ACTIVE (``state_detail`` keeps
  ``running``; the core holds it PENDING until SSH answers when
  ``ready="ssh"``). ``stopping``/``stopped`` stay ACTIVE with that detail: the
  instance is still held (its disk, its id) and can be started again, and states
  never go backwards. ``shutting-down``/``terminated`` are CANCELED, EXPIRED for a spot
  interruption or a shutdown at the end of the description's duration, DONE for a
  shutdown from inside the instance, FAILED for a launch that failed (capacity,
  volume limits).
- **Access** is ``ssh://<user>@<address>:22``: the public address, else the private
  one (``address=private`` prefers the private one). The user is the ``user``
  option, else the SSHContext's user, else ``ec2-user``.
- **Host keys.** The first connection is verified against the host key aiores made
  and injected in the user data (never trusted on first use). Over that connection,
  before the instance turns ACTIVE, the instance makes a new host key itself and
  sshd switches to it; aiores pins its public half (in the session and in
  ``<state dir>/ec2/hostkeys/``) and accepts the injected key no more, so the
  private key in the user data (readable through ``DescribeInstanceAttribute``,
  the metadata service, a DEBUG log of botocore) stops mattering once the instance
  is ACTIVE. This needs ``sudo -n`` for the login user (as EC2 images give it),
  ``ssh-keygen``, and sshd reloadable through systemd or its pid file (see
  :mod:`aiores_ec2._hostkeys`). With ``ComputeDescription(ready=None)`` aiores does
  not connect before ACTIVE, so the injected key stays until a session waits for
  the instance with ``ready="ssh"``.
- **Watching.** :meth:`EC2ResourceAdaptor.describe` is one ``DescribeInstances`` for up
  to 1000 ids; the session's watcher calls it once per tick for every watched
  instance of the endpoint.

- **Spot interruptions.** A spot instance's two-minute warning makes its record
  delete-pending (``max_wait_time`` counting down): read from its metadata service
  over SSH (``interruptions=metadata``, :mod:`aiores_ec2._spot`) or received from an
  EventBridge rule's SQS queue (``interruptions=events``, :mod:`aiores_ec2._events`).

See :mod:`aiores_ec2._setup` for the key pair, security group, host keys and user
data, and :mod:`aiores_ec2._options` for the URL options.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import datetime
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    ComputeDescription,
    DoesNotExist,
    IncorrectState,
    IncorrectURL,
    NetworkDescription,
    NotSupported,
    ResourceState,
    SSHContext,
    StorageDescription,
)
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    Bucket,
    CommandRunner,
    Image,
    PollPolicy,
    ResourceAdaptor,
    ResourceInfo,
    Template,
    concurrency,
)

from ._aws import Api, Target, error_code, open_api, target
from ._events import EVENT_BUCKETS, SQS_BUCKETS, EventNotices, EventQueue, resource_name
from ._firstuse import STALE_CODES, FirstUse, Setup
from ._hostkeys import HostKeys
from ._lease import EXPIRES_TAG, expires_at, expiry_tag, rearm
from ._networks import Networks, is_network_id
from ._options import Options, parse_options
from ._setup import new_host_key, user_data
from ._spot import Interruptions, Notices

__all__ = ["BUCKETS", "EC2ResourceAdaptor", "ec2_cost", "native_state"]

log = logging.getLogger("aiores.ec2")

#: EC2's published default token buckets (per account and region): request buckets
#: for non-mutating (Describe*: 100, refilled at 20 a second) and mutating actions
#: (50, at 5 a second), one per action, and resource buckets counting instances
#: launched (1000, at 2 a second) and terminated (1000, at 20 a second).
BUCKETS: Mapping[str, Bucket] = {
    "describe": Bucket(capacity=100, refill=20),
    "mutate": Bucket(capacity=50, refill=5),
    "instances-launched": Bucket(capacity=1000, refill=2),
    "instances-terminated": Bucket(capacity=1000, refill=20),
}

_STATES: Mapping[str, ResourceState] = {
    "pending": ResourceState.PENDING,
    "running": ResourceState.ACTIVE,
    "stopping": ResourceState.ACTIVE,
    "stopped": ResourceState.ACTIVE,
}
_ALIVE = ["pending", "running", "stopping", "stopped"]
_SPOT_REASONS = {"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"}
_FAILED_REASONS = {
    "Server.InternalError",
    "Server.InsufficientInstanceCapacity",
    "Client.VolumeLimitExceeded",
    "Client.InternalError",
    "Client.InvalidSnapshot.NotFound",
}
#: Ids per filter value list in the fallback describe.
FILTER_CHUNK = 200
#: Instances turned into ResourceInfos per loop turn (about 30 us each).
_INFOS_PER_TURN = 128
MAX_TAGS = 50
SSH_PORT = 22
RECONFIG_TIMEOUT = 600.0


def ec2_cost(action: str) -> Mapping[str, float]:
    """The request bucket an EC2 action takes a token from: its own, of its family's size.

    EC2 evaluates each API action apart (a burst of DescribeInstances does not
    throttle DescribeKeyPairs), with bucket sizes by family.
    """
    if action.startswith(("Describe", "Get", "List", "Search")):
        return {f"describe:{action}": 1}
    return {f"mutate:{action}": 1}


def native_state(name: str, reason: str, tags: Mapping[str, str]) -> ResourceState:
    """The aiores state of an instance state name and state-reason code."""
    state = _STATES.get(name)
    if state is not None:
        return state
    if reason in _SPOT_REASONS:
        return ResourceState.EXPIRED
    if reason == "Client.InstanceInitiatedShutdown":
        return ResourceState.EXPIRED if "aiores:expires" in tags else ResourceState.DONE
    if reason in _FAILED_REASONS:
        return ResourceState.FAILED
    return ResourceState.CANCELED


def _instances(answer: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The instances of a DescribeInstances answer, reservation by reservation."""
    for reservation in answer.get("Reservations", []):
        yield from reservation.get("Instances", [])


class EC2ResourceAdaptor(ResourceAdaptor):
    """Instances of one EC2 region and endpoint (see the module docstring)."""

    supports_networks = True

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self.options: Options = parse_options(url)
        self.poll = PollPolicy(floor=self.options.poll, ceiling=max(15.0, self.options.poll))
        self._api: Api | None = None
        self._user = "ec2-user"
        self._first = FirstUse(lambda: self.api, self.options, env.state_dir, url)
        self._launches = concurrency.InFlight[list[ResourceInfo]]("aiores-ec2 launch")
        self._abandoned: set[str] = set()
        self._templates: list[Template] | None = None
        self._hostkeys = HostKeys(env.state_dir)
        #: The injected (boot) host key of each instance seen, from its tag.
        self._boot_keys: dict[str, str] = {}
        self.networks = Networks(lambda: self.api, env, self.options, url)
        #: Spot interruption notices (``interruptions=metadata``: aiores_ec2._spot;
        #: ``events``: aiores_ec2._events, made in :meth:`open`, once the region is known).
        self.interruptions: Notices | None = None
        if self.options.interruptions == "metadata":
            self.interruptions = Interruptions(
                metadata=self.options.metadata,
                interval=self.options.interruption_poll,
                clock=env.clock,
                runner=env.command_runner,
                publish=self.publish,
                spawn=lambda fn, name: env.spawn(fn, name=name),
            )
        #: Spot instances SSH answered on (in this process, or rotated by another).
        self._reached: set[str] = set()

    @property
    def api(self) -> Api:
        """The EC2 calls (open between :meth:`open` and :meth:`aclose`)."""
        if self._api is None:
            raise IncorrectState(f"the {self.url} resource manager is not open")
        return self._api

    # -- lifecycle --------------------------------------------------------------------
    async def open(self) -> None:
        """Join the session's EC2 client for this region, endpoint and credentials.

        Raises:
            IncorrectURL: no region (in the URL or the AWSContext), or a bad endpoint.
            AuthenticationFailed: the AWSContext's profile does not exist.
        """
        t = target(
            "ec2",
            self.url,
            self.env,
            region=self.options.region,
            endpoint=self.options.endpoint,
            max_connections=self.options.max_connections,
        )
        if t.region is None:
            raise IncorrectURL(
                f"{self.url}: name a region (ec2://us-east-1) or set AWSContext(region=...)"
            )
        ctx = self.env.context(SSHContext)
        user = self.options.user or (ctx.user if ctx is not None else None)
        self._user = user or "ec2-user"
        api = open_api(self.env, t, buckets=BUCKETS, cost=ec2_cost, enabled=self.options.limits)
        await api.open()
        self._api = api
        await self._first.load()
        await self._hostkeys.refresh()
        if self.options.interruptions == "events" and self.interruptions is None:
            self.interruptions = self._event_notices(t)

    def _event_notices(self, t: Target) -> EventNotices:
        """This manager's notices, from the session's queue for ``t``'s endpoint, region
        and credentials (made by the first manager there)."""
        env = self.env
        where = dataclasses.replace(t, service="events", max_connections=0)

        def api(service: str, buckets: Mapping[str, Bucket]) -> Api:
            family = next(iter(buckets))
            return open_api(
                env,
                dataclasses.replace(t, service=service),
                buckets=buckets,
                cost=lambda action: {family: 1},
                enabled=self.options.limits,
            )

        def make() -> EventQueue:
            return EventQueue(
                events=api("events", EVENT_BUCKETS),
                sqs=api("sqs", SQS_BUCKETS),
                name=resource_name(
                    env.session_id,
                    f"{where.endpoint_url}|{where.region}|{where.access_key_id}|{where.profile}",
                ),
                tags={"aiores:managed": "1", "aiores:session": env.session_id},
                cleanups=env.cleanups,
                clock=env.clock,
                spawn=lambda fn, name: env.spawn(fn, name=name),
            )

        queue = env.shared((EventQueue, where), make)
        return EventNotices(queue, clock=env.clock, publish=self.publish)

    async def aclose(self) -> None:
        """Wait (bounded by the session) for launches under way, then leave the client."""
        if self.interruptions is not None:
            self.interruptions.aclose()
        try:
            await self._launches.aclose()
        finally:
            api, self._api = self._api, None
            if api is not None:
                await api.close()

    # -- instance records ------------------------------------------------------------------
    async def _infos(
        self, instances: Iterable[Mapping[str, Any]], known_tags: Mapping[str, str] | None = None
    ) -> list[ResourceInfo]:
        """:meth:`_info` of each instance, the loop given a turn after every
        :data:`_INFOS_PER_TURN` (a thousand instances' held it 30 ms at once)."""
        infos: list[ResourceInfo] = []
        for inst in instances:
            infos.append(self._info(inst, known_tags))
            if len(infos) % _INFOS_PER_TURN == 0:
                await asyncio.sleep(0)
        return infos

    def _info(
        self, inst: Mapping[str, Any], known_tags: Mapping[str, str] | None = None
    ) -> ResourceInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])} or dict(known_tags or {})
        name = inst.get("State", {}).get("Name", "pending")
        reason = inst.get("StateReason", {}).get("Code", "")
        state = native_state(name, reason, tags)
        public = inst.get("PublicIpAddress") or None
        private = inst.get("PrivateIpAddress") or None
        address = public if self.options.address == "public" and public else private or public
        user = tags.get("aiores:user") or self._user
        access = f"ssh://{user}@{address}:{SSH_PORT}" if address else None
        host_key = tags.get("aiores:hostkey")
        host_keys: tuple[str, ...] = ()
        if host_key:
            self._boot_keys[str(inst["InstanceId"])] = host_key
            host_keys = self._hostkeys.keys(str(inst["InstanceId"]), host_key)
        login: tuple[str, ...] = ()
        managed = self._first.managed
        if managed is not None and inst.get("KeyName") == managed[0]:
            login = (managed[1],)
        extra: dict[str, Any] = {
            "instance_type": inst.get("InstanceType"),
            "image": inst.get("ImageId"),
            "key_name": inst.get("KeyName"),
            "zone": inst.get("Placement", {}).get("AvailabilityZone"),
            "lifecycle": inst.get("InstanceLifecycle", "normal"),
        }
        if reason:
            extra["state_reason"] = reason
        ends = expires_at(tags)
        if ends is not None:
            extra["expires_at"] = ends
        launched = inst.get("LaunchTime")
        if isinstance(launched, datetime.datetime):
            extra["launch_time"] = launched.isoformat()
        info = ResourceInfo(
            id=str(inst["InstanceId"]),
            state=state,
            state_detail=name,
            rtype="compute",
            access=access,
            public_address=public,
            private_address=private,
            tags=frozenset(k[len("aiores:tag:") :] for k in tags if k.startswith("aiores:tag:")),
            token=tags.get("aiores:token"),
            host_keys=host_keys,
            login_keys=login,
            extra=extra,
        )
        rotated = len(host_keys) == 1 and host_keys[0] != host_key
        return self._spot(info, rotated=bool(host_key) and rotated)

    def _spot(self, info: ResourceInfo, *, rotated: bool = False) -> ResourceInfo:
        """``info`` with its spot interruption notice, if one came; a spot instance that
        is up (SSH answered: here, or its host key rotated) is read from then on."""
        if self.interruptions is None or info.extra.get("lifecycle") != "spot":
            return info
        if rotated:
            self._reached.add(info.id)
        if info.state.final:
            self._reached.discard(info.id)
        elif info.state is ResourceState.ACTIVE and (
            info.id in self._reached or not isinstance(self.interruptions, Interruptions)
        ):
            # The metadata service is read over SSH: once it answered. Events need none.
            self.interruptions.watch(info)
        return self.interruptions.update(info)

    # -- acquire ----------------------------------------------------------------------
    async def _instance_type(self, description: ComputeDescription) -> str:
        if description.template is not None:
            return description.template
        if description.cpus is None and description.memory is None:
            return self.options.template
        fitting = [
            t
            for t in await self.list_templates()
            if (description.cpus is None or (t.cpus or 0) >= description.cpus)
            and (description.memory is None or (t.memory or 0) >= description.memory)
        ]
        if not fitting:
            raise BadParameter(
                f"{self.url} has no instance type with {description.cpus} CPUs and "
                f"{description.memory} MiB"
            )
        best = min(fitting, key=lambda t: ((t.cpus or 0), (t.memory or 0), t.name))
        return best.name

    def _tags(self, description: ComputeDescription, token: str, host_key: str) -> dict[str, str]:
        tags = {
            "Name": f"aiores {token}",
            "aiores:managed": "1",
            "aiores:session": self.env.session_id,
            "aiores:token": token,
            "aiores:user": self._user,
            "aiores:hostkey": host_key,
        }
        if description.duration is not None:
            ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=description.duration
            )
            tags[EXPIRES_TAG] = ends.isoformat(timespec="seconds")
        for tag in sorted(description.tags):
            key = "aiores:tag:" + tag
            if len(key) > 128:
                raise BadParameter(f"ec2:// tags are 117 characters at most, not {tag!r}")
            tags[key] = "1"
        if len(tags) > MAX_TAGS:
            raise BadParameter(
                f"ec2:// instances carry {MAX_TAGS} tags at most; aiores uses "
                f"{len(tags) - len(description.tags)}, so give "
                f"{MAX_TAGS - len(tags) + len(description.tags)} tags at most"
            )
        return tags

    async def acquire(
        self,
        description: ComputeDescription | StorageDescription | NetworkDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Launch ``count`` instances: one RunInstances per batch of up to ``batch``.

        The first acquire of the adaptor makes the key pair and security group if
        they are missing (see :mod:`aiores_ec2._setup`). Instances of a description
        with a ``network`` launch into its subnet with its group alone; a
        NetworkDescription makes ``count`` networks (see :mod:`aiores_ec2._networks`).

        Raises:
            NotSupported: a StorageDescription (use ``s3://``).
            BadParameter: a network range EC2 cannot have or that overlaps another
                network, a ``network`` that is no network id, no image, too many
                tags, bad user data, or EC2 refused a parameter
                (``InvalidParameterValue``, ``InvalidAMIID.Malformed``...).
            DoesNotExist: EC2 does not know the image or key pair (``*.NotFound``).
            PermissionDenied, AuthenticationFailed: the credentials are refused.
            NoSuccess: EC2 has no capacity, a limit was reached, or throttling
                persisted past the retries.

        Cancelling it leaves the request to finish in the background: the core's
        cleanup (:meth:`find`) waits for it and releases what it made.
        """
        if isinstance(description, NetworkDescription):
            base = {
                "Name": f"aiores {token}",
                "aiores:managed": "1",
                "aiores:session": self.env.session_id,
                "aiores:token": token,
            }
            return [await self.networks.acquire(description, base) for _ in range(count)]
        if not isinstance(description, ComputeDescription):
            raise NotSupported("ec2:// acquires instances and networks; use s3:// for storage")
        if description.image is None:
            raise BadParameter(
                "ec2:// needs ComputeDescription.image: an AMI id (list_images() names them)"
            )
        instance_type = await self._instance_type(description)
        setup = await self._first.ensure()
        host_key = new_host_key()
        data = user_data(host_key, description.user_data, description.duration)
        tags = self._tags(description, token, host_key.public)
        params: dict[str, Any] = {
            "ImageId": description.image,
            "InstanceType": instance_type,
            "UserData": data,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        }
        if self.options.subnet:
            params["SubnetId"] = self.options.subnet
        if description.network is not None:
            params.update(await self.networks.placement(description.network))
        if description.duration is not None:
            params["InstanceInitiatedShutdownBehavior"] = "terminate"
        if self.options.market == "spot":
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        size = self.options.batch
        batches = [min(size, count - start) for start in range(0, count, size)]
        try:
            return await self._launches.run(
                token, self._launch(params, setup, batches, token, tags)
            )
        except asyncio.CancelledError:
            self._abandoned.add(token)  # no more retries: find() takes over
            raise

    async def _launch(
        self,
        params: Mapping[str, Any],
        setup: Setup,
        batches: Sequence[int],
        token: str,
        tags: Mapping[str, str],
    ) -> list[ResourceInfo]:
        async def one(index: int, n: int) -> list[ResourceInfo]:
            client_token = token if len(batches) == 1 else f"{token}-{index}"
            used = setup
            try:
                answer = await self._run(params, used, n, client_token, token)
            except AioresError as exc:
                # A key pair or group remembered from an earlier session is gone:
                # find or make it again, and launch once more (a new client token:
                # the refused request made nothing).
                if (
                    not self._first.remembered
                    or (error_code(exc.__cause__ or exc) or "") not in STALE_CODES
                ):
                    raise
                await self._first.forget(used)
                used = await self._first.ensure()
                answer = await self._run(params, used, n, client_token + "-r", token)
            return await self._infos(answer.get("Instances", []), tags)

        results = await asyncio.gather(*(one(i, n) for i, n in enumerate(batches)))
        return [info for batch in results for info in batch]

    async def _run(
        self, params: Mapping[str, Any], setup: Setup, n: int, client_token: str, token: str
    ) -> dict[str, Any]:
        return await self.api.call(
            "RunInstances",
            once={"instances-launched": n},
            give_up=lambda: token in self._abandoned,
            MinCount=n,
            MaxCount=n,
            ClientToken=client_token,
            KeyName=setup.key_name,
            **{"SecurityGroupIds": [setup.group_id], **params},  # a network's group wins
        )

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Instances launched under ``token`` that are not terminated.

        Waits for a launch under ``token`` still under way in this process (its
        answer names the instances even before EC2's describes show them), then asks
        EC2 for the instances tagged ``aiores:token=<token>``.

        Raises:
            AioresError: EC2 failed to answer (the session logs it; the journal keeps
                the intent pending, so a later recovery tries again).
        """
        self._abandoned.add(token)  # a launch under way retries no more
        launched = concurrency.result_of(await self._launches.take(token))
        self._abandoned.discard(token)
        found: dict[str, ResourceInfo] = {i.id: i for i in launched or ()}
        tagged = await self._filtered(
            [
                {"Name": "tag:aiores:token", "Values": [token]},
                {"Name": "instance-state-name", "Values": _ALIVE},
            ]
        )
        found.update((i.id, i) for i in tagged)
        found.update((i.id, i) for i in await self.networks.find(token))
        return [i for i in found.values() if not i.state.final]

    async def _filtered(self, filters: list[dict[str, Any]]) -> list[ResourceInfo]:
        infos: list[ResourceInfo] = []
        params: dict[str, Any] = {"Filters": filters, "MaxResults": 1000}
        await self._hostkeys.refresh()
        while True:
            page = await self.api.call("DescribeInstances", **params)
            infos.extend(await self._infos(_instances(page)))
            if not page.get("NextToken"):
                return infos
            params["NextToken"] = page["NextToken"]

    # -- watch, list, destroy ---------------------------------------------------------
    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """One DescribeInstances for up to 1000 ids; ids EC2 does not know are left out.

        If EC2 refuses the call for an unknown or malformed id, the ids are asked
        again through an ``instance-id`` filter (which skips unknown ones), in chunks
        of 200.

        Raises:
            AioresError: EC2 failed (transient failures were retried first).
        """
        nets = [i for i in ids if is_network_id(i)]
        if nets:
            found = await self.networks.describe(nets)
            rest = [i for i in ids if not is_network_id(i)]
            return {**found, **(await self.describe(rest))}
        if not ids:
            return {}
        await self._hostkeys.refresh()
        try:
            answer = await self.api.call("DescribeInstances", InstanceIds=list(ids))
        except (DoesNotExist, BadParameter) as exc:
            code = error_code(exc.__cause__ or exc) or ""
            if not code.startswith("InvalidInstanceID."):
                raise
            infos: list[ResourceInfo] = []
            for start in range(0, len(ids), FILTER_CHUNK):
                chunk = list(ids[start : start + FILTER_CHUNK])
                infos.extend(await self._filtered([{"Name": "instance-id", "Values": chunk}]))
            return {i.id: i for i in infos}
        return {info.id: info for info in await self._infos(_instances(answer))}

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """Instances aiores launched (any session) that are not terminated, and networks
        it made, that carry ``tags``."""
        filters = [
            {"Name": "tag:aiores:managed", "Values": ["1"]},
            {"Name": "instance-state-name", "Values": _ALIVE},
        ]
        filters.extend({"Name": f"tag:aiores:tag:{t}", "Values": ["1"]} for t in sorted(tags))
        return [*await self._filtered(filters), *await self.networks.tagged(tags)]

    async def destroy(self, ids: Sequence[str]) -> None:
        """Terminate the instances: one TerminateInstances per 1000 ids, concurrently.

        Ids EC2 does not know (or that are malformed) are skipped: already gone.
        Networks among the ids are deleted after the instances (waiting for those
        shutting down).

        Raises:
            IncorrectState: a network is still used by an instance not among the ids.
            AioresError: EC2 refused (transient failures were retried first).

        Cancelling it abandons the calls under way; EC2 may still carry them out.
        """
        nets = [i for i in ids if is_network_id(i)]
        ids = [i for i in ids if not is_network_id(i)]
        chunks = [list(ids[i : i + 1000]) for i in range(0, len(ids), 1000)]
        await asyncio.gather(*(self._terminate(chunk) for chunk in chunks))
        if self.interruptions is not None:
            self.interruptions.forget(ids)
        await self._hostkeys.forget(list(ids))
        if nets:
            await self.networks.destroy(nets)

    async def _terminate(self, ids: builtins.list[str]) -> None:
        try:
            await self.api.call(
                "TerminateInstances", once={"instances-terminated": len(ids)}, InstanceIds=ids
            )
            return
        except (DoesNotExist, BadParameter) as exc:
            code = error_code(exc.__cause__ or exc) or ""
            if not code.startswith("InvalidInstanceID."):
                raise
        existing = [i.id for i in (await self.describe(ids)).values() if not i.state.final]
        if existing:
            await self.api.call("TerminateInstances", InstanceIds=existing)

    async def reached(self, info: ResourceInfo, runner: CommandRunner) -> ResourceInfo:
        """Rotate the host key injected at boot; the info with the new key alone.

        Runs over the first connection verified against the injected key, before the
        instance turns ACTIVE (see :mod:`aiores_ec2._hostkeys`): the instance makes a
        new key itself, and aiores records and pins its public half. An instance
        whose host key aiores did not inject is left as it is.

        Raises:
            NoSuccess: a step failed on the instance (retried by the core).
            AioresError: the connection failed.
        """
        boot = self._boot_keys.get(info.id)
        if boot is not None:
            new = await self._hostkeys.rotate(info.id, boot, runner)
            info = dataclasses.replace(info, host_keys=(new,))
        return self._spot(info, rotated=True)

    async def renew(self, id: str, seconds: float) -> ResourceInfo:
        """Renew an instance's lease: re-arm its shutdown timer over SSH, then update
        its ``aiores:expires`` tag (see :mod:`aiores_ec2._lease`).

        The timer counts whole minutes: the instance ends no earlier than ``seconds``
        from now, and less than a minute later.

        Raises:
            DoesNotExist: EC2 does not know the instance.
            IncorrectState: it has ended, has no lease (no ``aiores:expires`` tag), or
                no address to reach it at.
            NoSuccess: the instance refused (no ``sudo -n``, no ``shutdown``).
            AioresError: the SSH connection or the tag update failed.

        Cancelling it may leave the timer re-armed and the tag not yet updated.
        """
        info = (await self.describe([id])).get(id)
        if info is None:
            raise DoesNotExist(f"{self.url} has no instance {id!r}")
        if info.state.final:
            raise IncorrectState(f"instance {id} is {info.state.name}: it has no lease to renew")
        if "expires_at" not in info.extra:
            raise IncorrectState(
                f"instance {id} has no lease to renew (it was acquired with no duration)"
            )
        if info.access is None:
            raise IncorrectState(f"instance {id} has no address yet to renew its lease over")
        ends = time.time() + seconds
        await rearm(await self.env.command_runner(info.access), seconds)
        await self.api.call(
            "CreateTags", Resources=[id], Tags=[{"Key": EXPIRES_TAG, "Value": expiry_tag(ends)}]
        )
        return dataclasses.replace(info, extra={**info.extra, "expires_at": ends})

    # -- templates, images, reconfig --------------------------------------------------
    async def list_templates(self) -> Sequence[Template]:
        """The instance types of the region (DescribeInstanceTypes; asked once, kept).

        The ``types`` option limits them (``t3.*,m5.large``).
        """
        if self._templates is None:
            templates: list[Template] = []
            params: dict[str, Any] = {"MaxResults": 100}
            if self.options.types:
                params["Filters"] = [{"Name": "instance-type", "Values": list(self.options.types)}]
            while True:
                page = await self.api.call("DescribeInstanceTypes", **params)
                for item in page.get("InstanceTypes", []):
                    extra = {
                        "architectures": item.get("ProcessorInfo", {}).get(
                            "SupportedArchitectures", []
                        ),
                        "hypervisor": item.get("Hypervisor"),
                    }
                    templates.append(
                        Template(
                            name=str(item["InstanceType"]),
                            cpus=item.get("VCpuInfo", {}).get("DefaultVCpus"),
                            memory=item.get("MemoryInfo", {}).get("SizeInMiB"),
                            extra=extra,
                        )
                    )
                if not page.get("NextToken"):
                    break
                params["NextToken"] = page["NextToken"]
            self._templates = sorted(templates, key=lambda t: t.name)
        return list(self._templates)

    async def list_images(self) -> Sequence[Image]:
        """Available images of the ``owners`` option's owners (default ``self,amazon``).

        Each image's ``name`` is its AMI id (what ``ComputeDescription.image`` takes);
        its ``description`` is the image's name.
        """
        answer = await self.api.call(
            "DescribeImages",
            Owners=list(self.options.owners),
            Filters=[{"Name": "state", "Values": ["available"]}],
        )
        images = [
            Image(
                name=str(item["ImageId"]),
                description=str(item.get("Name") or item.get("Description") or ""),
                extra={
                    "owner": item.get("OwnerId"),
                    "architecture": item.get("Architecture"),
                    "platform": item.get("PlatformDetails"),
                    "created": item.get("CreationDate"),
                },
            )
            for item in answer.get("Images", [])
        ]
        return sorted(images, key=lambda i: i.name)

    async def reconfig(
        self, id: str, description: ComputeDescription | StorageDescription | NetworkDescription
    ) -> ResourceInfo:
        """Change the instance type (the description's ``template``): stop, modify, start.

        Only the template can change; anything else is NotSupported (an instance
        boots from its image and user data once). The instance keeps its id, disk and
        host key; its public address may change.

        Raises:
            NotSupported: the description changes something but the template.
            DoesNotExist: no such instance.
            Timeout: it did not stop within 10 minutes.

        Cancelling it may leave the instance stopped (state_detail ``stopped``);
        reconfig again to start it.
        """
        if not isinstance(description, ComputeDescription) or description.template is None:
            raise NotSupported("ec2:// reconfig changes the instance type (template) only")
        current = (await self.describe([id])).get(id)
        if current is None:
            raise DoesNotExist(f"{self.url} has no instance {id!r}")
        if current.state.final:
            raise IncorrectState(f"instance {id} is {current.state_detail}")
        if current.extra.get("instance_type") == description.template:
            return current
        if current.state_detail not in ("stopped",):
            await self.api.call("StopInstances", InstanceIds=[id])
            await self._until(id, "stopped")
        await self.api.call(
            "ModifyInstanceAttribute", InstanceId=id, InstanceType={"Value": description.template}
        )
        await self.api.call("StartInstances", InstanceIds=[id])
        info = (await self.describe([id])).get(id)
        if info is None:
            raise DoesNotExist(f"{self.url}: instance {id!r} vanished during reconfig")
        return info

    async def _until(self, id: str, detail: str) -> None:
        delay = 0.5
        # Only this deadline becomes "did not become ... in time": a Timeout from
        # within (a describe's) keeps its own message.
        async with concurrency.fail_after(
            RECONFIG_TIMEOUT, f"instance {id} did not become {detail} in time"
        ):
            while True:
                info = (await self.describe([id])).get(id)
                if info is None or info.state.final:
                    raise IncorrectState(f"instance {id} ended while being reconfigured")
                if info.state_detail == detail:
                    return
                await self.env.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
