"""The ``s3://`` resource manager: buckets as storage resources.

- **Acquire** creates ``count`` buckets: the description's ``name`` (count 1), else
  ``aiores-<token>`` (``aiores-<token>-<i>`` for several); a bucket that exists
  already is refused (IncorrectState), never adopted. It tags each with
  ``aiores:managed=1``, ``aiores:session``, ``aiores:token`` and
  ``aiores:tag:<name>=1`` per description tag. As with ``ec2://``, the calls run in a
  task of their own that a cancelled acquire leaves running; :meth:`find` waits for
  it, then finds by name and token tag.
- **States.** A bucket that exists is ACTIVE (``state_detail`` ``available``); a
  destroyed one is CANCELED. Its ``access`` is ``s3://<bucket>`` (with the endpoint
  and region options), which ``session.file_adaptor`` opens for put/get.
- **Destroy** deletes the bucket. A bucket that still holds objects is refused with
  IncorrectState, unless the manager URL says ``empty=1``: then its objects and
  unfinished multipart uploads are deleted first.
- **Watching** is one ListBuckets per tick, whatever the number of buckets.
- **Errors** of the calls made for several buckets at once never leave as an
  ``ExceptionGroup``: one failure raises its error, several raise
  :class:`~aiores.FanOutError` carrying each.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    ComputeDescription,
    DoesNotExist,
    IncorrectState,
    NotSupported,
    PermissionDenied,
    ResourceState,
    StorageDescription,
)
from aiores.adaptor import URL, AdaptorEnv, PollPolicy, ResourceAdaptor, ResourceInfo, concurrency
from aiores_ec2 import error_code

from ._common import S3Client, parse_s3_options, together

__all__ = ["S3ResourceAdaptor"]

_DELETE_BATCH = 1000


class S3ResourceAdaptor(S3Client, ResourceAdaptor):
    """Buckets of one S3 endpoint (see the module docstring)."""

    poll = PollPolicy(floor=5.0, ceiling=60.0, batch=1000)
    _role = "resource manager"

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self.options = parse_s3_options(url)
        self._creations = concurrency.InFlight[list[ResourceInfo]]("aiores-s3 create")
        self._tags: dict[str, dict[str, str]] = {}  # bucket -> its tags, once learnt

    async def aclose(self) -> None:
        """Wait for creations under way, then leave the client."""
        try:
            await self._creations.aclose()
        finally:
            await self._leave()

    def _info(self, name: str, created: Any = None) -> ResourceInfo:
        tags = self._tags.get(name, {})
        access = str(URL(scheme="s3", host=name, query=self.options.query()))
        extra: dict[str, Any] = {}
        if isinstance(created, datetime.datetime):
            extra["created"] = created.isoformat()
        return ResourceInfo(
            id=name,
            state=ResourceState.ACTIVE,
            state_detail="available",
            rtype="storage",
            access=access,
            tags=frozenset(k[len("aiores:tag:") :] for k in tags if k.startswith("aiores:tag:")),
            token=tags.get("aiores:token"),
            extra=extra,
        )

    # -- acquire ----------------------------------------------------------------------
    async def acquire(
        self,
        description: ComputeDescription | StorageDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Create ``count`` buckets and tag them (see the module docstring).

        Raises:
            NotSupported: a ComputeDescription (use ``ec2://``).
            BadParameter: a name with count > 1, or a name S3 refuses.
            IncorrectState: a bucket of that name exists already (yours or not).

        Cancelling it leaves the creation to finish: :meth:`find` releases it.
        """
        if not isinstance(description, StorageDescription):
            raise NotSupported("s3:// acquires buckets (StorageDescription); use ec2:// for VMs")
        if description.name is not None and count != 1:
            raise BadParameter("a StorageDescription with a name makes one bucket, not several")
        if description.name is not None:
            names = [description.name]
        elif count == 1:
            names = [f"aiores-{token}".lower()]
        else:
            names = [f"aiores-{token}-{i}".lower() for i in range(count)]
        tags = {
            "aiores:managed": "1",
            "aiores:session": self.env.session_id,
            "aiores:token": token,
            **{f"aiores:tag:{t}": "1" for t in sorted(description.tags)},
        }
        return await self._creations.run(token, self._create(names, tags))

    async def _create(self, names: list[str], tags: Mapping[str, str]) -> list[ResourceInfo]:
        config: dict[str, Any] = {}
        region = self.api.target.region
        if region and region != "us-east-1":
            config["CreateBucketConfiguration"] = {"LocationConstraint": region}
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]

        async def one(name: str) -> ResourceInfo:
            # In us-east-1, CreateBucket of a bucket you own succeeds: never adopt (and
            # so perhaps release) a bucket that was there before.
            try:
                await self.api.call("HeadBucket", Bucket=name)
            except (DoesNotExist, PermissionDenied):
                # 403: someone else's bucket, or no right to look. CreateBucket tells
                # which: BucketAlreadyExists, or AccessDenied.
                pass
            else:
                raise IncorrectState(f"bucket {name!r} exists already")
            try:
                await self.api.call("CreateBucket", Bucket=name, **config)
            except AioresError as exc:
                code = error_code(exc.__cause__ or exc)
                if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    raise IncorrectState(f"bucket {name!r} exists already ({code})") from exc
                raise
            await self.api.call("PutBucketTagging", Bucket=name, Tagging={"TagSet": tag_set})
            self._tags[name] = dict(tags)
            return self._info(name)

        return await together(
            [functools.partial(one, n) for n in names], several=f"creating {len(names)} buckets"
        )

    async def _bucket_tags(self, name: str) -> dict[str, str] | None:
        """The bucket's tags (None if it does not exist)."""
        try:
            answer = await self.api.call("GetBucketTagging", Bucket=name)
        except DoesNotExist as exc:
            if error_code(exc.__cause__ or exc) == "NoSuchBucket":
                return None
            return {}  # NoSuchTagSet: a bucket without tags
        tags = {t["Key"]: t["Value"] for t in answer.get("TagSet", [])}
        self._tags[name] = tags
        return tags

    async def _buckets(self) -> dict[str, Any]:
        answer = await self.api.call("ListBuckets")
        return {b["Name"]: b.get("CreationDate") for b in answer.get("Buckets", [])}

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Buckets made under ``token``: waits for a creation under way, then checks tags."""
        created = concurrency.result_of(await self._creations.take(token))
        prefix = f"aiores-{token}".lower()
        existing = await self._buckets()
        candidates = {n for n in existing if n == prefix or n.startswith(prefix + "-")}
        candidates.update(i.id for i in created or ())
        found = []
        for name in sorted(candidates):
            tags = await self._bucket_tags(name)
            if tags is not None and tags.get("aiores:token") == token:
                found.append(self._info(name, existing.get(name)))
        return found

    # -- watch, list, destroy ---------------------------------------------------------
    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """One ListBuckets for any number of ids (and their tags, the first time)."""
        existing = await self._buckets()
        result = {}
        for name in ids:
            if name in existing:
                if name not in self._tags:
                    await self._bucket_tags(name)
                result[name] = self._info(name, existing[name])
        return result

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """Buckets aiores made (any session) that carry ``tags`` (a tagging call per bucket)."""
        existing = await self._buckets()
        names = sorted(existing)
        found = await together([functools.partial(self._bucket_tags, n) for n in names])
        wanted = {f"aiores:tag:{t}" for t in tags}
        return [
            self._info(name, existing[name])
            for name, bucket_tags in zip(names, found, strict=True)
            if bucket_tags
            and bucket_tags.get("aiores:managed") == "1"
            and wanted <= set(bucket_tags)
        ]

    async def destroy(self, ids: Sequence[str]) -> None:
        """Delete the buckets (emptied first with ``empty=1``); gone ones are no error.

        Raises:
            IncorrectState: a bucket is not empty and the URL does not say ``empty=1``.
        """
        await together(
            [functools.partial(self._delete, name) for name in ids],
            several=f"destroying {len(ids)} buckets",
        )

    async def _delete(self, name: str) -> None:
        try:
            if self.options.empty:
                await self._empty(name)
            await self.api.call("DeleteBucket", Bucket=name)
        except IncorrectState as exc:
            raise IncorrectState(
                f"bucket {name!r} is not empty: delete its objects, or destroy it through "
                "a manager whose URL says empty=1"
            ) from exc
        except DoesNotExist:
            pass  # gone already
        self._tags.pop(name, None)

    async def _empty(self, name: str) -> None:
        params: dict[str, Any] = {"Bucket": name}
        while True:
            page = await self.api.call("ListObjectsV2", **params)
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for start in range(0, len(keys), _DELETE_BATCH):
                chunk = keys[start : start + _DELETE_BATCH]
                await self.api.call(
                    "DeleteObjects", Bucket=name, Delete={"Objects": chunk, "Quiet": True}
                )
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        uploads = await self.api.call("ListMultipartUploads", Bucket=name)
        for upload in uploads.get("Uploads", []):
            with contextlib.suppress(DoesNotExist):
                await self.api.call(
                    "AbortMultipartUpload",
                    Bucket=name,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
