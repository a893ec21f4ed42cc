"""A full disk is one line naming the stage and the file, and leaves nothing half-written. The disk is
really full: a small tmpfs mounted over the folder the stage writes to (mounting needs root)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.fsutil import safetensors_problem, storage_failure
from kontext_core.lifecycle import leftovers
from kontext_core.stages import manifest_path

pytestmark = pytest.mark.reliability


@contextmanager
def small_disk(folder: Path, size: int, read_only: bool = False) -> Iterator[Path]:
    """`folder` on a tmpfs of `size` bytes, with the folder's content copied onto it (then remounted
    read-only with `read_only`: a write is refused even to root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    saved = folder.with_name(folder.name + ".saved")
    folder.mkdir(parents=True, exist_ok=True)
    folder.rename(saved)
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        folder.rmdir()
        saved.rename(folder)
        pytest.skip(f"this machine refuses a tmpfs mount: {mounted.stderr.decode().strip()}")
    try:
        shutil.copytree(saved, folder, dirs_exist_ok=True, symlinks=True)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()
        saved.rename(folder)


def _used(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.slow
def test_a_full_disk_during_quantize_is_one_line_and_leaves_nothing(project_copy):
    project = project_copy
    quantized = project / "models/quantized"
    needed = _used(quantized)
    shutil.rmtree(quantized)
    manifest_path(project, "quantize").unlink()
    # Room for what is there and half of the quantized weights.
    with small_disk(project / "models", _used(project / "models") + needed // 2):
        result = CliRunner().invoke(app, ["stage", "quantize", "--params", str(project / "params.yaml")])
        assert leftovers(project) == []  # the staging folder went with the failure
        assert not quantized.exists() and not manifest_path(project, "quantize").exists()
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: stage quantize: disk full (No space left on device)"), errors[0]
    assert "models/quantized" in errors[0] and "Traceback" not in result.output


@pytest.mark.slow
def test_a_refused_write_during_a_cache_stage_is_one_line(project_copy):
    project = project_copy
    entry = sorted((project / "cache/text/embeds").rglob("*.safetensors"))[0]
    entry.unlink()  # one entry to encode again
    with small_disk(project / "cache", _used(project / "cache") * 2, read_only=True):
        result = CliRunner().invoke(app, ["stage", "cache_text", "--params", str(project / "params.yaml")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(".safetensors; the stage kept nothing of this run"), errors
    assert errors[0].startswith("error: stage cache_text: read-only file system (Read-only file system): cache/text")
    assert "Traceback" not in result.output and leftovers(project) == []


def test_a_full_disk_under_the_cache_store_names_the_file_and_keeps_no_temp_file(tmp_path):
    from kontext_core.cache.store import TensorStore

    with small_disk(tmp_path / "cache", 256 << 10) as folder:
        store = TensorStore(folder)
        with pytest.raises(OSError) as full:
            for index in range(64):  # 64 KiB each: the fourth or fifth does not fit
                store.put(f"{index:064x}", {"latents": torch.zeros(128, 128)})
        assert full.value.errno == errno.ENOSPC
        assert storage_failure(full.value)[0] == "disk full (No space left on device)"
        assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
        written = sorted(folder.rglob("*.safetensors"))
        assert written and all(safetensors_problem(path) is None for path in written)  # each one whole
