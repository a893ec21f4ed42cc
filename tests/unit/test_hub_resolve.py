"""A hub id is the commit it resolves to: branch, tag or commit, from the cache when offline; the
model's and a hub dataset's fingerprints record that commit and follow `refs/main` when it moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontext_core.config import ConfigError, Params
from kontext_core.data.subjects_replica import SUBJECTS_REPO, write_subjects_hub_cache
from kontext_core.hub.cache import repo_folder, set_ref, write_snapshot
from kontext_core.hub.resolve import resolve
from kontext_core.model.source import model_fingerprint, model_location

REPO = "org/some-model"


def _snapshot(hub: Path, text: str, ref: str | None = "main") -> str:
    source = hub.parent / f"src-{text}"
    source.mkdir(parents=True, exist_ok=True)
    (source / "config.json").write_text(f'{{"v": "{text}"}}\n')
    return write_snapshot(hub, REPO, source, ref=ref)


@pytest.fixture
def offline_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_branch_tag_and_commit_resolve_to_their_snapshots(offline_home):
    hub = offline_home / "hub"
    first = _snapshot(hub, "one")
    second = _snapshot(hub, "two", ref=None)
    set_ref(hub, REPO, "v1", second)
    assert resolve(REPO).commit == first  # no revision: main
    assert resolve(REPO, "main").path == repo_folder(hub, REPO) / "snapshots" / first
    assert resolve(REPO, "v1").commit == second  # a tag
    assert resolve(REPO, second).commit == second  # a commit
    set_ref(hub, REPO, "main", second)
    assert resolve(REPO).commit == second


def test_not_cached_while_offline_is_one_line_naming_the_id_and_home(offline_home):
    _snapshot(offline_home / "hub", "one")
    for repo, revision in (("org/absent", None), (REPO, "no-such-branch")):
        with pytest.raises(ConfigError) as raised:
            resolve(repo, revision)
        message = str(raised.value)
        assert "\n" not in message and repo in message and str(offline_home) in message
        assert "hf download" in message and "HF_HUB_OFFLINE" in message


def test_model_fingerprint_records_the_commit_and_follows_main(offline_home, tmp_path):
    hub = offline_home / "hub"
    first = _snapshot(hub, "one")
    params = Params(pretrained_model_name_or_path=REPO)
    assert model_fingerprint(params, tmp_path) == {"hub_id": REPO, "commit": first}
    where = model_location(params, tmp_path)
    assert (where.source, where.revision) == (str(repo_folder(hub, REPO) / "snapshots" / first), None)
    second = _snapshot(hub, "two")
    assert model_fingerprint(params, tmp_path) == {"hub_id": REPO, "commit": second}
    pinned = Params(pretrained_model_name_or_path=REPO, revision=first)
    assert model_fingerprint(pinned, tmp_path)["commit"] == first


def test_hub_dataset_fingerprint_records_its_commit(offline_home, tmp_path):
    from kontext_core.config import DatasetEntry
    from kontext_core.data.hf_backend import HuggingFaceBackend

    commit = write_subjects_hub_cache(offline_home, count=2, size=16, shards=1)
    entry = DatasetEntry(id="subjects", type="huggingface", dataset_name=SUBJECTS_REPO)
    identity = HuggingFaceBackend().fingerprint(entry, tmp_path, tmp_path / "memo.json")
    assert identity == {"hub": SUBJECTS_REPO, "split": "train", "commit": commit}
    moved = write_subjects_hub_cache(offline_home, count=2, size=16, shards=1, seed=1)
    assert moved != commit
    assert HuggingFaceBackend().fingerprint(entry, tmp_path, tmp_path / "memo.json")["commit"] == moved


def test_lineage_names_the_base_that_quantize_read_not_a_stale_later_manifest(tmp_path):
    import json

    from kontext_core.tracking.lineage import BASE_MODEL_TAG, MANIFEST_DIR, lineage_tags

    manifests = tmp_path / MANIFEST_DIR
    manifests.mkdir(parents=True)
    old, new = {"hub_id": REPO, "commit": "a" * 40}, {"hub_id": REPO, "commit": "b" * 40}
    # refs/main moved: quantize has run again, validate (after train) not yet.
    for stage, base in (("cache_vae", new), ("quantize", new), ("validate", old)):
        manifest = {"stage": stage, "fingerprint": stage, "inputs": {"base_model": base}}
        (manifests / f"{stage}.json").write_text(json.dumps(manifest))
    assert json.loads(lineage_tags(tmp_path)[BASE_MODEL_TAG]) == new


def test_reproduce_pins_revision_to_the_recorded_commit_of_a_hub_base():
    import json

    from kontext_core.reproduce.params import pin_hub_revision

    logged = {"pretrained_model_name_or_path": REPO, "revision": "None", "seed": "42"}
    tag = json.dumps({"hub_id": REPO, "commit": "c" * 40})
    assert pin_hub_revision(logged, tag) == {**logged, "revision": "c" * 40}
    assert pin_hub_revision(logged, json.dumps({"local": "d" * 64})) == logged
    assert pin_hub_revision({**logged, "pretrained_model_name_or_path": "other/id"}, tag)["revision"] == "None"
    assert pin_hub_revision(logged, None) == logged
