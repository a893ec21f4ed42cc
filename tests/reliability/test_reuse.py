"""Every reuse checks content, not structure: a cache entry whose bytes differ from the digest its
stage recorded is encoded again (never recorded again), and a stage without a manifest is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kontext_core.fsutil import forget_file_hashes, safetensors_problem
from kontext_core.stages import STAGE_ORDER, run_stage
from kontext_core.stages.verify import verify_project

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def flip_middle_byte(path: Path) -> None:
    """One byte of the tensor data changed; same size, same mtime, header still whole."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 3] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # A new process (the next `kontext run`) remembers no hash: neither may this test.
    forget_file_hashes(path)


@pytest.mark.parametrize(("stage", "store"), [("cache_vae", "cache/vae/latents"), ("cache_text", "cache/text/embeds")])
def test_a_flipped_byte_in_a_cache_entry_is_encoded_again_not_re_recorded(project_copy, stage, store):
    project = project_copy
    entry = sorted((project / store).rglob("*.safetensors"))[0]
    fresh = entry.read_bytes()
    flip_middle_byte(entry)
    assert safetensors_problem(entry) is None  # structurally whole: only its content gives it away
    rel = entry.relative_to(project).as_posix()
    assert any(p.startswith(rel) for p in verify_project(project)[stage])

    result = run_stage(stage, project / "params.yaml")

    assert not result["skipped"]
    assert result["info"]["encoded"] == 1
    assert entry.read_bytes() == fresh  # repaired to a fresh run's bytes
    forget_file_hashes(project)
    assert verify_project(project)[stage] == []


def test_a_missing_manifest_is_named_and_fails_verify(project_copy):
    from flows.cli import app

    project = project_copy
    (project / "artifacts/manifests/train.json").unlink()

    report = verify_project(project)
    missing = "artifacts/manifests/train.json: missing (the stage never ran, or its record was removed)"
    assert report["train"] == [missing]
    assert not any(report[name] for name in STAGE_ORDER if name != "train")
    result = CliRunner().invoke(app, ["verify", "--params", str(project / "params.yaml")])
    assert result.exit_code == 1
    assert "damaged: train: artifacts/manifests/train.json: missing" in result.output
