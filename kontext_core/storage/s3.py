"""boto3 clients for `type: aws` datasets and s3:// caches: one per store, errors in one line.

A `S3Store` names where objects live (endpoint, region, bucket) and how to sign (the entry's keys,
else boto3's standard chain: environment, profile, instance role). Its secrets are `SecretStr`s:
its repr, the logs and every error message show only the bucket and the prefix.

Clients are made once per (store, process) and are safe to share between threads.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

# Bytes fetched by ranged and whole-object GETs in this process, by kind ("header", "image", "text"):
# the bench and the tests read it to prove a warm run downloads no image bytes.
DOWNLOADED: dict[str, int] = {}
_COUNT_LOCK = threading.Lock()


def count_download(kind: str, n: int) -> None:
    with _COUNT_LOCK:
        DOWNLOADED[kind] = DOWNLOADED.get(kind, 0) + n


class S3Error(RuntimeError):
    """An S3 failure, already phrased as one line naming the bucket and prefix (never a secret)."""


@dataclass(frozen=True)
class S3Store:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = field(default=None, repr=False)
    secret_access_key: SecretStr | None = field(default=None, repr=False)
    session_token: SecretStr | None = field(default=None, repr=False)
    max_pool_connections: int = 128

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")


# bucket -> how to reach it, learnt from the dataset entries this process has seen (an aws entry's
# endpoint and keys), so a bare `s3://bucket/key` (a table's reference, an s3:// cache) can be read.
_KNOWN: dict[str, S3Store] = {}


def remember_store(store: S3Store) -> None:
    _KNOWN[store.bucket] = store


def known_stores() -> dict[str, S3Store]:
    return dict(_KNOWN)


def store_for_bucket(bucket: str) -> S3Store:
    """The store an aws entry named for `bucket`, else the AWS chain (AWS_ENDPOINT_URL included)."""
    return _KNOWN.get(bucket) or S3Store(bucket=bucket, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@functools.lru_cache(maxsize=64)
def client(store: S3Store) -> Any:
    """A boto3 S3 client for `store` (cached per process; thread-safe)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=_secret(store.access_key_id),
        aws_secret_access_key=_secret(store.secret_access_key),
        aws_session_token=_secret(store.session_token),
        region_name=store.region,
    )
    config = Config(
        max_pool_connections=store.max_pool_connections,
        retries={"max_attempts": 3, "mode": "standard"},
        # Path-style works on every S3-compatible store (MinIO, moto, Ceph) and on AWS.
        s3={"addressing_style": "path"} if store.endpoint_url else {},
        connect_timeout=10,
        read_timeout=60,
    )
    return session.client("s3", endpoint_url=store.endpoint_url, config=config)


# S3 error codes by what the user has to fix.
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken", "ExpiredToken"}
_NO_BUCKET = {"NoSuchBucket"}
_NO_KEY = {"NoSuchKey", "404", "NotFound"}


def describe(exc: BaseException, store: S3Store, prefix: str = "") -> str:
    """One line for a boto3/botocore error: the bucket and prefix, what went wrong, what to check."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    where = f"s3://{store.bucket}/{prefix}" if prefix else f"s3://{store.bucket}"
    if store.endpoint_url:
        where += f" (endpoint {store.endpoint_url})"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NO_BUCKET:
            return f"{where}: no such bucket '{store.bucket}'"
        if code in _DENIED:
            return (
                f"{where}: access denied ({code}): check aws_access_key_id / aws_secret_access_key "
                "or the AWS credential chain (AWS_ACCESS_KEY_ID, AWS_PROFILE)"
            )
        if code in _NO_KEY:
            return f"{where}: no such object"
        return f"{where}: S3 error {code or type(exc).__name__}"
    if isinstance(exc, NoCredentialsError):
        return f"{where}: no credentials: set aws_access_key_id / aws_secret_access_key or the AWS chain"
    if isinstance(exc, EndpointConnectionError):
        return f"{where}: cannot reach the endpoint"
    if isinstance(exc, BotoCoreError):
        return f"{where}: {type(exc).__name__}"
    return f"{where}: {type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def list_objects(store: S3Store, prefix: str, page_size: int | None = None) -> list[ObjectInfo]:
    """Every object under `prefix` (all pages), sorted by key; S3Error naming the bucket and prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: list[ObjectInfo] = []
    paging = {"PageSize": page_size} if page_size else {}
    try:
        paginator = client(store).get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=store.bucket, Prefix=prefix, PaginationConfig=paging)
        for page in pages:
            for item in page.get("Contents", []):
                found.append(ObjectInfo(item["Key"], str(item.get("ETag", "")).strip('"'), int(item["Size"])))
    except (ClientError, BotoCoreError) as exc:
        raise S3Error(describe(exc, store, prefix)) from None
    found.sort(key=lambda o: o.key)
    return found


def head(store: S3Store, key: str) -> ObjectInfo:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        meta = client(store).head_object(Bucket=store.bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise S3Error(describe(exc, store, key)) from None
    return ObjectInfo(key, str(meta.get("ETag", "")).strip('"'), int(meta["ContentLength"]))


def get_bytes(store: S3Store, key: str, kind: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes (or bytes start..end inclusive with a ranged GET); counted under `kind`."""
    from botocore.exceptions import BotoCoreError, ClientError

    args: dict[str, Any] = {"Bucket": store.bucket, "Key": key}
    if start is not None:
        args["Range"] = f"bytes={start}-{'' if end is None else end}"
    try:
        body = client(store).get_object(**args)["Body"]
        data = body.read()
    except (ClientError, BotoCoreError) as exc:
        raise S3Error(describe(exc, store, key)) from None
    count_download(kind, len(data))
    return data


class RangedReader(io.RawIOBase):
    """A seekable read-only view of one object that fetches only the bytes read (ranged GETs).

    Each miss fetches at least `MIN_FETCH` bytes from the read position. The header probe reads the
    first bytes and the last 4 KiB (the truncation check): two small requests whatever the image's size.
    """

    MIN_FETCH = 16 * 1024

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size = store, key, size
        self.pos = 0
        self.ranges: list[tuple[int, bytes]] = []  # (start, bytes) fetched so far

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _chunk(self, want: int) -> bytes:
        """Bytes from `pos` (up to `want`) out of a fetched range, fetching one if none covers `pos`."""
        for start, data in self.ranges:
            if start <= self.pos < start + len(data):
                return data[self.pos - start : self.pos - start + want]
        end = min(self.size, self.pos + max(want, self.MIN_FETCH)) - 1
        data = get_bytes(self.store, self.key, "header", self.pos, end)
        self.ranges.append((self.pos, data))
        return data[:want]

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(0, self.size - self.pos))
        got = 0
        while got < want:
            chunk = self._chunk(want - got)
            if not chunk:
                break
            buffer[got : got + len(chunk)] = chunk
            got += len(chunk)
            self.pos += len(chunk)
        return got

    def read(self, size: int | None = -1) -> bytes:
        size = self.size - self.pos if size is None or size < 0 else size
        buffer = bytearray(max(0, min(size, self.size - self.pos)))
        n = self.readinto(buffer)
        return bytes(buffer[:n])


def split_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key/or/prefix') of an s3:// URI."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key
