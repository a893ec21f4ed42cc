"""`TensorStore`'s interface on S3 (`s3://bucket/prefix`): a cache that several machines share.

Content-addressed like the local store (`<prefix>/<key[:2]>/<key>.safetensors`, the key hashing what
determines the entry), so an entry made on a CPU box is reused by a GPU worker as is. Written so a
partial object is never trusted:
- the whole file is serialised in memory and sent in one PUT under its final key, with its SHA-256
  and size as object metadata (S3 makes an object visible only once its upload completed; an
  interrupted upload leaves nothing under the key);
- `has` trusts an object only with that metadata and a matching size; `get` re-hashes the bytes and
  treats a mismatch as absent (the object is deleted, so the next `put` replaces it).

Local reads go through `LayeredStore`: the local store first, then the bucket (downloaded into the
local store, verified), and `put` writes both. The cache stages use it when the dataset file names an
s3:// cache (`shared_cache`): what one machine encoded, another downloads instead of encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load, save

from kontext_core.cache.store import TensorStore
from kontext_core.fsutil import atomic_path, sha256_json
from kontext_core.storage.s3 import (
    S3Error,
    S3Store,
    client,
    count_download,
    describe,
    error_code,
    split_uri,
    store_for_bucket,
)

log = logging.getLogger(__name__)

SHA_META = "kontext-sha256"
SIZE_META = "kontext-size"


class S3TensorStore:
    """Content-addressed safetensors entries under an s3:// prefix (same calls as TensorStore)."""

    def __init__(self, uri: str, store: S3Store | None = None) -> None:
        bucket, prefix = split_uri(uri)
        self.uri = uri.rstrip("/")
        # The endpoint and keys of an aws entry naming the bucket, else the AWS chain.
        self.store = store or store_for_bucket(bucket)
        self.prefix = prefix.strip("/")

    @staticmethod
    def key(**parts: object) -> str:
        return sha256_json(parts)

    def object_key(self, key: str) -> str:
        name = f"{key[:2]}/{key}.safetensors"
        return f"{self.prefix}/{name}" if self.prefix else name

    def path(self, key: str) -> str:
        return f"{self.uri}/{key[:2]}/{key}.safetensors"

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return client(self.store).head_object(Bucket=self.store.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise S3Error(describe(exc, self.store, self.object_key(key))) from None
        except BotoCoreError as exc:
            raise S3Error(describe(exc, self.store, self.object_key(key))) from None

    def has(self, key: str) -> bool:
        """An entry is there only when its object carries the digest and size it was written with."""
        meta = self._head(key)
        if meta is None:
            return False
        recorded = meta.get("Metadata", {})
        return SHA_META in recorded and recorded.get(SIZE_META) == str(meta["ContentLength"])

    def put_bytes(self, key: str, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256(data).hexdigest()
        try:
            client(self.store).put_object(
                Bucket=self.store.bucket,
                Key=self.object_key(key),
                Body=data,
                Metadata={SHA_META: digest, SIZE_META: str(len(data))},
            )
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(describe(exc, self.store, self.object_key(key))) from None
        return self.path(key)

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> str:
        return self.put_bytes(key, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))

    def get_bytes(self, key: str) -> bytes | None:
        """The entry's verified bytes, or None (absent, or damaged: then it is removed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        name = self.object_key(key)
        try:
            answer = client(self.store).get_object(Bucket=self.store.bucket, Key=name)
            data = answer["Body"].read()
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise S3Error(describe(exc, self.store, name)) from None
        except BotoCoreError as exc:
            raise S3Error(describe(exc, self.store, name)) from None
        count_download("cache", len(data))
        if answer.get("Metadata", {}).get(SHA_META) != hashlib.sha256(data).hexdigest():
            log.warning("%s: cache entry fails its digest check; dropped, it will be recomputed", self.path(key))
            client(self.store).delete_object(Bucket=self.store.bucket, Key=name)
            return None
        return data

    def get(self, key: str) -> dict[str, torch.Tensor]:
        data = self.get_bytes(key)
        if data is None:
            raise KeyError(f"{self.path(key)}: not in the cache")
        return load(data)


class LayeredStore:
    """A local TensorStore in front of a shared S3TensorStore: read local, then the bucket; write both."""

    def __init__(self, local: TensorStore, remote: S3TensorStore) -> None:
        self.local, self.remote = local, remote

    key = staticmethod(TensorStore.key)

    def path(self, key: str) -> Path:
        return self.local.path(key)

    def has(self, key: str) -> bool:
        return self.local.has(key) or self._pull(key)

    def _pull(self, key: str) -> bool:
        data = self.remote.get_bytes(key)
        if data is None:
            return False
        with atomic_path(self.local.path(key)) as tmp:
            Path(tmp).write_bytes(data)
        return True

    def deferred_dir_sync(self) -> contextlib.AbstractContextManager[None]:
        return self.local.deferred_dir_sync()

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        return self.put_many([(key, tensors)])[0]

    def put_many(self, entries: list[tuple[str, dict[str, torch.Tensor]]]) -> list[Path]:
        written = self.local.put_many(entries)
        for (key, _), dest in zip(entries, written, strict=True):
            self.remote.put_bytes(key, dest.read_bytes())
        return written

    def get(self, key: str) -> dict[str, torch.Tensor]:
        if not self.has(key):
            raise KeyError(f"{self.local.path(key)}: not in the cache")
        return self.local.get(key)


def shared_cache(local: TensorStore, uri: str | None) -> TensorStore | LayeredStore:
    """The local store alone, or in front of the shared one at `uri` (an s3:// location)."""
    return LayeredStore(local, S3TensorStore(uri)) if uri else local
