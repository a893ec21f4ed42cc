"""`type: aws` datasets against a real S3 API (moto's server on loopback): listing, headers, captions,
errors, and the same records and pairs as the same images in a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontext_core.config import ConfigError, load_datasets
from kontext_core.data.samples import write_edit_pairs
from kontext_core.storage import s3 as s3_client
from tests.s3.conftest import S3Server

pytestmark = pytest.mark.s3

BUCKET = "kontext-unit"


@pytest.fixture(scope="module")
def pairs_bucket(s3_server: S3Server, tmp_path_factory) -> Path:
    """Edit pairs (edited/ with .txt captions, reference/) in a local folder and under s3://BUCKET/pairs/."""
    folder = tmp_path_factory.mktemp("pairs")
    write_edit_pairs(folder, count=5, size=48, seed=3)
    s3_server.make_bucket(BUCKET)
    s3_server.upload_folder(folder, BUCKET, "pairs")
    return folder


def aws_entry(server: S3Server, entry_id: str, prefix: str, **extra) -> dict:
    return {
        "id": entry_id,
        "type": "aws",
        "aws_bucket_name": BUCKET,
        "aws_data_prefix": prefix,
        "aws_endpoint_url": server.endpoint,
        "aws_region_name": server.region,
        "aws_access_key_id": server.key_id,
        "aws_secret_access_key": server.secret,
        **extra,
    }


def two_sets(edited: dict, reference: dict) -> list[dict]:
    return [
        {**edited, "caption_strategy": "textfile", "conditioning_data": [reference["id"]]},
        {**reference, "conditioning_type": "reference_strict", "caption_strategy": None},
    ]


def write_config(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_records_from_s3_equal_the_local_folders_and_secrets_stay_hidden(s3_server, pairs_bucket, tmp_path):
    from kontext_core.data.backends import backend_for

    aws = two_sets(aws_entry(s3_server, "ed", "pairs/edited"), aws_entry(s3_server, "ref", "pairs/reference"))
    local = two_sets(
        {"id": "ed", "type": "local", "instance_data_dir": str(pairs_bucket / "edited")},
        {"id": "ref", "type": "local", "instance_data_dir": str(pairs_bucket / "reference")},
    )
    aws_sets = load_datasets(write_config(tmp_path / "aws.json", aws), base_dir=tmp_path)
    local_sets = load_datasets(write_config(tmp_path / "local.json", local), base_dir=tmp_path)
    for aws_entry_, local_entry in zip(aws_sets.enabled(), local_sets.enabled(), strict=True):
        s3_recs, s3_probs = backend_for(aws_entry_).records(aws_entry_, tmp_path, tmp_path / "scan")
        local_recs, local_probs = backend_for(local_entry).records(local_entry, tmp_path, None)
        assert s3_probs == local_probs == []
        assert len(s3_recs) == 5
        # Same keys (paths below the prefix), captions from the .txt objects, header sizes.
        assert [(r.key, r.caption, r.width, r.height) for r in s3_recs] == [
            (r.key, r.caption, r.width, r.height) for r in local_recs
        ]
        assert all(r.image == f"s3://{BUCKET}/{aws_entry_.backend_options.aws_data_prefix}/{r.key}" for r in s3_recs)
    # The entry never shows its secret (repr, dumps, the store's repr).
    entry = aws_sets.enabled()[0]
    for text in (repr(entry), str(entry.model_dump()), entry.model_dump_json(), repr(s3_client.S3Store("b"))):
        assert s3_server.secret not in text


def test_a_warm_fetch_reads_no_object_bytes_and_headers_are_ranged(s3_server, pairs_bucket, tmp_path):
    # A big image: the header probe must not download it whole.
    from PIL import Image

    from kontext_core.data.backends import backend_for

    big = tmp_path / "big.png"
    Image.effect_noise((700, 500), 64).convert("RGB").save(big)
    s3_server.client().upload_file(str(big), BUCKET, "big/one.png")
    entry = load_datasets(
        write_config(tmp_path / "d.json", [{**aws_entry(s3_server, "big", "big"), "conditioning": [
            {"type": "jpeg_artifacts", "quality": 20}]}]),
        base_dir=tmp_path,
    ).enabled()[0]
    s3_client.DOWNLOADED.clear()
    records, problems = backend_for(entry).records(entry, tmp_path, tmp_path / "scan")
    assert problems == [] and (records[0].width, records[0].height) == (700, 500)
    assert s3_client.DOWNLOADED.get("header", 0) <= 3 * s3_client.RangedReader.MIN_FETCH < big.stat().st_size
    assert "image" not in s3_client.DOWNLOADED
    s3_client.DOWNLOADED.clear()
    again, _ = backend_for(entry).records(entry, tmp_path, tmp_path / "scan")
    assert again == records
    assert s3_client.DOWNLOADED == {}  # headers remembered by (key, ETag)
    # The fingerprint is a listing: it changes with the object, and downloads nothing.
    before = backend_for(entry).fingerprint(entry, tmp_path, tmp_path / "memo.json")
    Image.effect_noise((700, 500), 32).convert("RGB").save(big)
    s3_server.client().upload_file(str(big), BUCKET, "big/one.png")
    after = backend_for(entry).fingerprint(entry, tmp_path, tmp_path / "memo.json")
    assert before != after and s3_client.DOWNLOADED == {}


def test_listing_follows_every_page(s3_server, pairs_bucket):
    store = s3_client.S3Store(BUCKET, s3_server.endpoint, s3_server.region,
                              *(map(__import__("pydantic").SecretStr, (s3_server.key_id, s3_server.secret))))
    paged = s3_client.list_objects(store, "pairs/", page_size=2)
    assert len(paged) == 15  # 5 edited + 5 captions + 5 references, three objects a page at most 2
    assert [o.key for o in paged] == sorted(o.key for o in paged)


def _problems(tmp_path: Path, entries: list[dict]) -> str:
    from kontext_core.stages.datasets import registered_kind_problems

    with pytest.raises(ConfigError) as err:
        load_datasets(write_config(tmp_path / "bad.json", entries), base_dir=tmp_path,
                      extra_checks=registered_kind_problems)
    return str(err.value)


def test_bad_bucket_bad_keys_and_missing_prefix_are_one_line_each(s3_server, pairs_bucket, tmp_path):
    good = aws_entry(s3_server, "ref", "pairs/reference")

    message = _problems(tmp_path, two_sets(aws_entry(s3_server, "ed", "pairs/edited", aws_bucket_name="nope"), good))
    assert message.count("\n") == 0
    assert "dataset 'ed'" in message and "s3://nope/pairs/edited/" in message and "no such bucket" in message

    wrong = aws_entry(s3_server, "ed", "pairs/edited", aws_secret_access_key="not-the-secret")
    message = _problems(tmp_path, two_sets(wrong, good))
    assert message.count("\n") == 0
    assert f"s3://{BUCKET}/pairs/edited/" in message and "access denied" in message
    assert "not-the-secret" not in message and s3_server.key_id not in message

    unknown = aws_entry(s3_server, "ed", "pairs/edited", aws_access_key_id="AKIANOBODY")
    assert "access denied" in _problems(tmp_path, two_sets(unknown, good))

    message = _problems(tmp_path, two_sets(aws_entry(s3_server, "ed", "pairs/nothing-here"), good))
    assert message.count("\n") == 0
    assert f"s3://{BUCKET}/pairs/nothing-here/" in message and "no objects under aws_data_prefix" in message

    message = _problems(tmp_path, two_sets({**aws_entry(s3_server, "ed", "x"), "aws_bucket_name": None}, good))
    assert "type 'aws' needs 'aws_bucket_name'" in message


def test_credentials_come_from_the_aws_chain_when_the_entry_has_none(s3_server, pairs_bucket, tmp_path, monkeypatch):
    from kontext_core.data.backends import backend_for

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bare = {"id": "ed", "type": "aws", "aws_bucket_name": BUCKET, "aws_data_prefix": "pairs/reference",
            "aws_endpoint_url": s3_server.endpoint, "conditioning": [{"type": "jpeg_artifacts", "quality": 20}]}
    entry = load_datasets(write_config(tmp_path / "chain.json", [bare]), base_dir=tmp_path).enabled()[0]
    records, problems = backend_for(entry).records(entry, tmp_path, None)
    assert len(records) == 5 and problems == []
