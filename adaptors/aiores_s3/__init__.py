"""``s3://``: S3 buckets as storage resources, and their objects as files, on aioboto3.

    async with aiores.Session(contexts=[aiores.AWSContext(region="eu-west-1")]) as session:
        mgr = session.manager("s3://")
        bucket = await mgr.acquire(aiores.StorageDescription(tags={"results"}))
        files = await session.file_adaptor(bucket.access)      # s3://aiores-t-...
        await files.put("big.tar", "runs/1/big.tar")          # multipart, streamed
        await files.get("runs/1/big.tar", "/tmp/")
        await bucket.destroy()                                 # refused unless empty

Install with ``pip install 'aiores[ec2]'`` (one extra for EC2 and S3). Credentials,
endpoint and the shared client work as for ``ec2://`` (:mod:`aiores_ec2`). See
:mod:`aiores_s3._common` for the URL options, :mod:`aiores_s3._buckets` for bucket
resources and :mod:`aiores_s3._files` for transfers.
"""

from __future__ import annotations

from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin

from ._buckets import S3ResourceAdaptor
from ._common import S3Options, parse_s3_options
from ._files import S3FileAdaptor

__all__ = ["S3FileAdaptor", "S3Options", "S3Plugin", "S3ResourceAdaptor", "plugin"]


class S3Plugin(AdaptorPlugin):
    """Opens the ``s3://`` resource manager and file adaptors."""

    name = "s3"
    schemes = frozenset({"s3"})

    def endpoint(self, url: URL) -> str:
        """``s3://<bucket>`` plus its options, sorted (a bucket's files share an adaptor)."""
        parse_s3_options(url)
        return str(URL(scheme="s3", host=url.host, query=tuple(sorted(url.query))))

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> S3ResourceAdaptor:
        return S3ResourceAdaptor(url, env)

    def file_adaptor(self, url: URL, env: AdaptorEnv) -> S3FileAdaptor:
        return S3FileAdaptor(url, env)


#: The plugin the registry loads for ``s3://``.
plugin = S3Plugin()
