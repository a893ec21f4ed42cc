"""`type: aws`: images under s3://aws_bucket_name/aws_data_prefix, referenced as `s3://bucket/key`.

SimpleTuner's keys and meanings, held by this backend's own options model (`S3Options`):
`aws_bucket_name`, `aws_data_prefix` (the folder inside the bucket: it plays `instance_data_dir`'s
part, and keys below it pair across sets as relative paths do), `aws_endpoint_url` (MinIO, Ceph,
R2, a local test server), `aws_region_name`, `aws_access_key_id`, `aws_secret_access_key` (left
out: boto3's chain: environment, profile, role) and `aws_max_pool_connections`.

What it reads, and when:
- listing (all pages) gives every key, ETag and size: the dataset's fingerprint is their hash, so
  nothing is downloaded to decide whether fetch is current;
- header sizes come from ranged GETs of the first 16 KiB and last 4 KiB (`RangedReader`), remembered in
  the scan cache by (key, ETag), so an unchanged object is never read twice;
- captions (`caption_strategy: textfile`) are the `.txt` objects beside the images, remembered the
  same way; `filename` and `instanceprompt` work as for local folders;
- pixels are downloaded only by the stages that decode them (degrade, cache_vae, validate), and
  their caches are keyed by `ref_digest` = hash of (ETag, size): a warm re-run downloads no image.

Secrets live only in memory (`S3Store`, SecretStr): tables hold `s3://bucket/key`, never an endpoint
or a key, and errors name the bucket and prefix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field, SecretStr

from kontext_core.config import DatasetEntry
from kontext_core.config.base import Strict
from kontext_core.data.backend import DatasetBackend
from kontext_core.data.captions import uses_only_instance_prompt, with_instance_prompt
from kontext_core.data.images import IMAGE_EXTENSIONS, ImageReadError, open_rgb, probe_stream
from kontext_core.data.records import BAD_CAPTION, MISSING_CAPTION, UNREADABLE, Problem, Record
from kontext_core.fsutil import atomic_path
from kontext_core.storage.s3 import (
    ObjectInfo,
    RangedReader,
    S3Error,
    S3Store,
    describe,
    get_bytes,
    head,
    known_stores,
    list_objects,
    remember_store,
    split_uri,
    store_for_bucket,
)

log = logging.getLogger(__name__)

REF_PREFIX = "s3://"
SCAN_VERSION = 1
# Header reads in flight at once (each a ranged GET); the client's pool bounds it too.
HEADER_THREADS = 16

# (bucket, key) -> (etag, size) from listings, so a digest needs no request.
_LISTED: dict[tuple[str, str], tuple[str, int]] = {}


class S3Options(Strict):
    """The keys of a `type: aws` entry (SimpleTuner's names), written beside the shared keys: objects
    under s3://aws_bucket_name/aws_data_prefix. Keys left out come from the standard AWS chain (env,
    profile); the secrets are SecretStr so no dump, log or report of an entry can show them."""

    aws_bucket_name: str | None = None
    aws_data_prefix: str = ""
    aws_endpoint_url: str | None = None
    aws_region_name: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_max_pool_connections: int = Field(128, ge=1)

    def cache_location(self) -> str | None:
        """Where a text_embeds entry of this type shares its cache: its bucket and prefix."""
        if not self.aws_bucket_name:
            return None
        return f"s3://{self.aws_bucket_name}/{(self.aws_data_prefix or '').strip('/')}".rstrip("/")


def options_of(entry: DatasetEntry) -> S3Options:
    return S3Backend().options_of(entry)  # type: ignore[return-value]


def store_of(entry: DatasetEntry) -> S3Store:
    options = options_of(entry)
    return S3Store(
        bucket=options.aws_bucket_name or "",
        endpoint_url=options.aws_endpoint_url or None,
        region=options.aws_region_name or None,
        access_key_id=options.aws_access_key_id,
        secret_access_key=options.aws_secret_access_key,
        session_token=options.aws_session_token,
        max_pool_connections=options.aws_max_pool_connections,
    )


def prefix_of(entry: DatasetEntry) -> str:
    """The folder in the bucket, ending in '/' (empty: the whole bucket)."""
    prefix = (options_of(entry).aws_data_prefix or "").lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def remember(entry: DatasetEntry) -> S3Store:
    store = store_of(entry)
    remember_store(store)
    return store


def object_digest(etag: str, size: int) -> str:
    return hashlib.sha256(f"s3-object|{etag}|{size}".encode()).hexdigest()


def _caption_key(key: str) -> str:
    return os.path.splitext(key)[0] + ".txt"


class _ScanCache:
    """Header sizes and captions by (key, ETag): what fetch learnt from an object's bytes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict[str, list]] = {"images": {}, "captions": {}}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
                if loaded.get("version") == SCAN_VERSION:
                    self.data = {"images": loaded.get("images", {}), "captions": loaded.get("captions", {})}
            except (OSError, ValueError):
                pass

    def get(self, kind: str, obj: ObjectInfo) -> list | None:
        hit = self.data[kind].get(obj.key)
        return hit[1:] if hit and hit[0] == obj.etag else None

    def put(self, kind: str, obj: ObjectInfo, value: list) -> None:
        self.data[kind][obj.key] = [obj.etag, *value]

    def save(self, keep: set[str]) -> None:
        if self.path is None:
            return
        out = {kind: {k: v for k, v in items.items() if k in keep} for kind, items in self.data.items()}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"version": SCAN_VERSION, **out}, sort_keys=True))


def _probe(store: S3Store, obj: ObjectInfo) -> list:
    if obj.size == 0:
        return [None, None, "empty file (0 bytes)"]
    try:
        with RangedReader(store, obj.key, obj.size) as reader:
            width, height = probe_stream(reader, obj.size)
    except ImageReadError as exc:
        return [None, None, str(exc)]
    return [width, height, None]


def _read_caption(store: S3Store, obj: ObjectInfo) -> list:
    """[caption, problem reason, problem kind] of one .txt object."""
    try:
        text = get_bytes(store, obj.key, "text").decode("utf-8")
    except UnicodeDecodeError as exc:
        return [None, f"caption file {os.path.basename(obj.key)} is not UTF-8 ({exc.reason} at byte {exc.start})",
                BAD_CAPTION]
    text = text.strip()
    if not text:
        return [None, f"caption file {os.path.basename(obj.key)} is empty", MISSING_CAPTION]
    return [text, None, None]


class S3Backend(DatasetBackend):
    type = "aws"
    ref_prefix = REF_PREFIX
    options = S3Options

    def check(self, entry: DatasetEntry, workdir: Path) -> list[str]:
        where = f"dataset '{entry.id}'"
        if not options_of(entry).aws_bucket_name:
            return [f"{where}: type 'aws' needs 'aws_bucket_name'"]
        store, prefix = store_of(entry), prefix_of(entry)
        from botocore.exceptions import BotoCoreError, ClientError

        from kontext_core.storage.s3 import client

        try:
            listed = client(store).list_objects_v2(Bucket=store.bucket, Prefix=prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            return [f"{where}: {describe(exc, store, prefix)}"]
        if not listed.get("KeyCount"):
            missing = f"no objects under aws_data_prefix '{options_of(entry).aws_data_prefix}'"
            return [f"{where}: s3://{store.bucket}/{prefix}: {missing}"]
        remember(entry)
        return []

    def prepare(self, entries: list[DatasetEntry]) -> None:
        for entry in entries:
            if options_of(entry).aws_bucket_name:
                remember(entry)

    def state(self) -> Any:
        return known_stores()

    def restore(self, state: Any) -> None:
        for store in (state or {}).values():
            remember_store(store)

    def _listing(self, entry: DatasetEntry) -> tuple[S3Store, str, list[ObjectInfo]]:
        store, prefix = remember(entry), prefix_of(entry)
        try:
            objects = list_objects(store, prefix)
        except S3Error as exc:
            raise S3Error(f"dataset '{entry.id}': {exc}") from None
        for obj in objects:
            _LISTED[(store.bucket, obj.key)] = (obj.etag, obj.size)
        return store, prefix, objects

    def records(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None
    ) -> tuple[list[Record], list[Problem]]:
        from kontext_core.progress import progress

        store, prefix, objects = self._listing(entry)
        by_key = {obj.key: obj for obj in objects}
        images = [obj for obj in objects if obj.key.lower().endswith(IMAGE_EXTENSIONS) and not obj.key.endswith("/")]
        cache = _ScanCache(scan_cache_dir / f"{entry.id}.json" if scan_cache_dir is not None else None)
        todo = [obj for obj in images if cache.get("images", obj) is None]
        wants_text = entry.caption_strategy == "textfile" and not uses_only_instance_prompt(entry)
        texts = [by_key[_caption_key(o.key)] for o in images if wants_text and _caption_key(o.key) in by_key]
        texts_todo = [obj for obj in texts if cache.get("captions", obj) is None]
        threads = max(1, min(HEADER_THREADS, store.max_pool_connections))
        with progress(len(todo) + len(texts_todo), f"fetch {entry.id}", "object") as bar:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for obj, header in zip(todo, pool.map(functools.partial(_probe, store), todo), strict=True):
                    cache.put("images", obj, header)
                    bar.update()
                for obj, caption in zip(texts_todo, pool.map(functools.partial(_read_caption, store), texts_todo),
                                        strict=True):
                    cache.put("captions", obj, caption)
                    bar.update()
        cache.save({obj.key for obj in objects})
        records: list[Record] = []
        problems: list[Problem] = []
        for obj in images:
            ref = f"{REF_PREFIX}{store.bucket}/{obj.key}"
            width, height, reason = cache.get("images", obj) or [None, None, "not read"]
            if reason is not None:
                problems.append(Problem(entry.id, ref, reason, UNREADABLE))
                continue
            caption, problem = self._caption(entry, obj, ref, by_key, cache)
            if problem is not None:
                problems.append(problem)
            digest = object_digest(obj.etag, obj.size)  # what `ref_digest` answers, from the listing
            records.append(Record(entry.id, obj.key[len(prefix):], ref, caption, ref, width, height, digest))
        return records, problems

    def _caption(
        self, entry: DatasetEntry, obj: ObjectInfo, ref: str, by_key: dict[str, ObjectInfo], cache: _ScanCache
    ) -> tuple[str | None, Problem | None]:
        if uses_only_instance_prompt(entry):
            return entry.instance_prompt, None
        strategy, caption, problem = entry.caption_strategy, None, None
        if strategy == "textfile":
            text_obj = by_key.get(_caption_key(obj.key))
            name = os.path.basename(_caption_key(obj.key))
            if text_obj is None:
                problem = Problem(entry.id, ref, f"caption file {name} missing", MISSING_CAPTION)
            else:
                caption, reason, kind = cache.get("captions", text_obj) or [None, "not read", BAD_CAPTION]
                if reason is not None:
                    problem = Problem(entry.id, ref, reason, kind)
        elif strategy == "filename":
            caption = os.path.splitext(os.path.basename(obj.key))[0].replace("_", " ").strip()
        elif strategy == "instanceprompt":
            caption = entry.instance_prompt
        return with_instance_prompt(entry, caption), problem

    def fingerprint(self, entry: DatasetEntry, workdir: Path, memo_file: Path) -> Any:
        """Bucket, prefix and the hash of every listed (key, ETag, size): a listing, no download."""
        if not options_of(entry).aws_bucket_name:
            return "missing"
        store, prefix, objects = self._listing(entry)
        listing = hashlib.sha256()
        for obj in objects:
            listing.update(f"{obj.key[len(prefix):]}\0{obj.etag}\0{obj.size}\n".encode())
        return {"bucket": store.bucket, "prefix": prefix, "objects": len(objects), "listing": listing.hexdigest()}

    def _object(self, ref: str) -> tuple[S3Store, ObjectInfo]:
        bucket, key = split_uri(ref)
        store = store_for_bucket(bucket)
        listed = _LISTED.get((bucket, key))
        if listed is None:
            info = head(store, key)
            _LISTED[(bucket, key)] = (info.etag, info.size)
            return store, info
        return store, ObjectInfo(key, *listed)

    def open_ref(self, ref: str, workdir: Path) -> Image.Image:
        bucket, key = split_uri(ref)
        try:
            data = get_bytes(store_for_bucket(bucket), key, "image")
        except S3Error as exc:
            raise ImageReadError(f"{ref}: {exc}") from None
        return open_rgb(data, name=ref)

    def ref_digest(self, ref: str, workdir: Path) -> str:
        _, obj = self._object(ref)
        return object_digest(obj.etag, obj.size)

    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        store, obj = self._object(ref)
        header = _probe(store, obj)
        if header[2] is not None:
            raise ImageReadError(f"{ref}: {header[2]}")
        return header[0], header[1]
