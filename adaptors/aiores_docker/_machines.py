"""Containers as machines: the ``docker://`` resource manager.

``acquire`` makes long-running containers of ``ComputeDescription.image`` (else the
URL's ``?image=``): their main process is ``sleep <duration>`` (``sleep infinity``
without a ``duration``), so the image needs ``sleep``, and a lease ends on the machine
itself: the container exits when its duration has passed and the machine is EXPIRED.
``cpus`` and ``memory`` (MiB) limit it; its tags are labels (``aiores.tag.<tag>``),
with those naming aiores, the session and the idempotency token, so :meth:`find`,
``describe`` and :meth:`list` find machines from any program. A machine is ACTIVE once
its container runs (nothing to wait for: commands and files reach it through the
exec and archive APIs at its access URL ``docker://[host[:port]]/<container id>``).
``destroy`` removes the container (CANCELED). States are pushed by the daemon's event
stream that the job service shares.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiores import (
    BadParameter,
    ComputeDescription,
    DoesNotExist,
    NotSupported,
    ResourceState,
    StorageDescription,
)
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    Image,
    ResourceAdaptor,
    ResourceInfo,
    concurrency,
)

from ._daemon import LABEL, Daemon, Listener, label_filter
from ._options import (
    exit_detail,
    label,
    labels_of,
    listed_exit_code,
    machine_state,
    parse_options,
)

__all__ = ["DockerResourceAdaptor"]


class DockerResourceAdaptor(ResourceAdaptor):
    """Acquires containers of one Docker daemon as machines (``docker://``)."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self.options = parse_options(url)
        self.daemon = Daemon.shared(env, url)
        self._base = str(URL(scheme="docker", host=url.host, port=url.port))
        self._machines: dict[str, ResourceInfo] = {}
        self._destroying: set[str] = set()
        self._acquires = concurrency.InFlight[builtins.list[ResourceInfo]]("aiores-docker acquire")
        self._subscription: Listener = (self._on_event, self._on_listing)

    async def open(self) -> None:
        """Follow the daemon's events; returns once the stream is open.

        Raises:
            NoSuccess: the daemon does not answer. PermissionDenied: the socket.
        """
        self.daemon.subscribe(self.env, self._subscription)
        await self.daemon.connected()

    # -- acquire -------------------------------------------------------------------------
    def _config(self, desc: ComputeDescription, token: str) -> dict[str, Any]:
        image = desc.image or self.options.image
        if not image:
            raise BadParameter(
                "ComputeDescription.image must name the container image of a docker:// "
                "machine, or the URL must give one: docker://?image=NAME"
            )
        if desc.template is not None:
            raise NotSupported(
                "docker:// has no templates (ComputeDescription.template): give cpus and memory"
            )
        if desc.user_data is not None:
            raise NotSupported(
                "docker:// machines take no user data (ComputeDescription.user_data)"
            )
        labels = {
            LABEL: "1",
            label("kind"): "machine",
            label("session"): self.env.session_id,
            label("token"): token,
            **{label(f"tag.{tag}"): "1" for tag in desc.tags},
        }
        lasts = "infinity"
        if desc.duration is not None:
            seconds = math.ceil(desc.duration)
            lasts = str(seconds)
            labels[label("expires")] = str(int(time.time()) + seconds)
        host: dict[str, Any] = {"Binds": list(self.options.volumes)} if self.options.volumes else {}
        if desc.cpus is not None:
            host["NanoCpus"] = desc.cpus * 1_000_000_000
        if desc.memory is not None:
            host["Memory"] = desc.memory * 1024 * 1024
        return {
            "Image": image,
            "Entrypoint": ["sleep"],
            "Cmd": [lasts],
            "Labels": labels,
            "HostConfig": host,
        }

    async def acquire(
        self, description: ComputeDescription | StorageDescription, count: int, token: str
    ) -> Sequence[ResourceInfo]:
        """Create and start ``count`` containers; they are ACTIVE when this returns.

        Raises:
            BadParameter: no image. NotSupported: storage, a template or user data.
            DoesNotExist: the image is not on the daemon (pull or build it first).
            NoSuccess, PermissionDenied: the daemon cannot be reached.

        Cancelling it leaves the request running; :meth:`find` waits for it.
        """
        if not isinstance(description, ComputeDescription):
            raise NotSupported("docker:// makes machines only (a ComputeDescription)")
        config = self._config(description, token)
        return await self._acquires.run(token, self._make(config, count))

    async def _make(self, config: dict[str, Any], count: int) -> builtins.list[ResourceInfo]:
        image = config["Image"]

        async def one() -> ResourceInfo:
            try:
                made = await self.daemon.json(
                    f"creating a container of {image!r}", "containers/create", "POST", body=config
                )
            except DoesNotExist as exc:
                raise DoesNotExist(
                    f"image {image!r} is not on the Docker daemon at {self.daemon.address}: "
                    f"pull or build it first (docker pull {image}), or name another in "
                    "ComputeDescription.image"
                ) from exc
            id = str(made["Id"])
            self._machines[id] = self._info(id, config["Labels"], "created", None, image)
            await self.daemon.call(f"starting container {id[:12]}", f"containers/{id}/start")
            info = self._machines.get(id)
            if info is not None and info.state is ResourceState.PENDING:
                info = self._info(id, config["Labels"], "running", None, image)
                self._machines[id] = info
            return info or self._info(id, config["Labels"], "running", None, image)

        outcomes = await concurrency.settle(one() for _ in range(count))
        failures = concurrency.errors(outcomes)
        if failures:
            made = [o.id for o in outcomes if isinstance(o, ResourceInfo)]
            if made:
                await self.destroy(made)
            raise failures[0]
        return [o for o in outcomes if isinstance(o, ResourceInfo)]

    def _info(
        self,
        id: str,
        labels: Mapping[str, str],
        status: str,
        code: int | None,
        image: str,
    ) -> ResourceInfo:
        ours = {
            k[len(LABEL) + 1 :]: v for k, v in labels.items() if k.startswith(LABEL + ".")
        } or dict(labels)
        leased = "expires" in ours
        state = machine_state(status, code, leased)
        if id in self._destroying and state.final:
            state = ResourceState.CANCELED
        detail = status if not state.final else exit_detail(code)
        if state is ResourceState.EXPIRED:
            detail = "lease expired"
        elif state is ResourceState.CANCELED:
            detail = "destroyed"
        extra: dict[str, Any] = {"image": image, "container": id[:12]}
        if leased:
            extra["expires"] = float(ours["expires"])
        return ResourceInfo(
            id=id,
            state=state,
            state_detail=detail,
            access=f"{self._base}/{id}",
            tags=frozenset(k[4:] for k in ours if k.startswith("tag.")),
            token=ours.get("token"),
            extra=extra,
        )

    def _from_container(self, container: Mapping[str, Any]) -> ResourceInfo:
        return self._info(
            str(container["Id"]),
            {f"{LABEL}.{k}": v for k, v in labels_of(container).items()},
            str(container.get("State", "")),
            listed_exit_code(container),
            str(container.get("Image", "")),
        )

    # -- what the daemon says ------------------------------------------------------------
    def _update(self, info: ResourceInfo) -> None:
        old = self._machines.get(info.id)
        if old is not None and (old.state.final or old.state is info.state):
            if old.state is info.state:
                self._machines[info.id] = info
            return
        self._machines[info.id] = info
        self.publish(info)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        id = str(event.get("id") or actor.get("ID") or "")
        old = self._machines.get(id)
        if old is None or old.state.final:
            return
        action = str(event.get("Action") or event.get("status") or "")
        attributes = actor.get("Attributes") or {}
        labels = {k: v for k, v in attributes.items() if k == LABEL or k.startswith(LABEL + ".")}
        image = str(old.extra.get("image", ""))
        if action == "start":
            self._update(self._info(id, labels, "running", None, image))
        elif action == "die":
            code = attributes.get("exitCode")
            number = int(code) if code is not None and str(code).lstrip("-").isdigit() else None
            self._update(self._info(id, labels, "exited", number, image))
        elif action in ("destroy", "remove"):
            self._destroying.add(id)
            self._update(_destroyed(old))

    def _on_listing(self, listing: Sequence[Mapping[str, Any]]) -> None:
        by_id = {str(c.get("Id")): c for c in listing}
        for id, old in builtins.list(self._machines.items()):
            if old.state.final:
                continue
            container = by_id.get(id)
            if container is None:
                self._destroying.add(id)
                self._update(_destroyed(old))
            else:
                self._update(self._from_container(container))

    # -- queries -------------------------------------------------------------------------
    async def _listed(self, what: str, **labels: str) -> builtins.list[ResourceInfo]:
        await self.daemon.connected()  # events from now on reach what is listed
        listing = await self.daemon.containers(what, label_filter(kind="machine", **labels))
        infos = []
        for container in listing:
            id = str(container["Id"])
            known = self._machines.get(id)
            if known is None or not known.state.final:
                self._machines[id] = self._from_container(container)
            infos.append(self._machines[id])
        return infos

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """The current state of each id; unknown ids are looked up on the daemon."""
        if any(id not in self._machines for id in ids):
            await self._listed("looking up machines")
        return {id: self._machines[id] for id in ids if id in self._machines}

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Every machine made under ``token`` that still exists (an acquire of this
        adaptor still under way is waited for)."""
        await self._acquires.take(token)
        return [i for i in await self._listed("finding machines", token=token) if not i.state.final]

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """The machines of this daemon that carry all ``tags`` (and exist)."""
        found = await self._listed("listing machines", **{f"tag.{t}": "1" for t in tags})
        return [i for i in found if not i.state.final or i.state is ResourceState.EXPIRED]

    async def destroy(self, ids: Sequence[str]) -> None:
        """Remove the containers (CANCELED); ids already gone are not an error."""

        async def one(id: str) -> None:
            self._destroying.add(id)
            with contextlib.suppress(DoesNotExist):
                await self.daemon.call(
                    f"removing container {id[:12]}",
                    f"containers/{id}",
                    "DELETE",
                    params={"force": "1"},
                )
            old = self._machines.get(id)
            if old is not None and not old.state.final:
                self._update(_destroyed(old))

        failures = concurrency.errors(await concurrency.settle(one(id) for id in ids))
        if failures:
            raise failures[0]

    async def list_images(self) -> Sequence[Image]:
        """The images on the daemon, by tag."""
        found = await self.daemon.json("listing images", "images/json") or ()
        return [
            Image(name=tag, extra={"id": str(image.get("Id", ""))})
            for image in found
            for tag in image.get("RepoTags") or ()
            if tag != "<none>:<none>"
        ]

    async def aclose(self) -> None:
        """Stop following; machines run on. Acquires under way are waited for."""
        self.daemon.unsubscribe(self._subscription)
        await self._acquires.aclose()


def _destroyed(info: ResourceInfo) -> ResourceInfo:
    return dataclasses.replace(info, state=ResourceState.CANCELED, state_detail="destroyed")
