"""Paths in every stored output are project-relative, with problems in the data or without: the fetch
summary and the pair report name a broken image by its path inside the project."""

from __future__ import annotations

import pytest
from PIL import Image

from kontext_core.stages import run_stage

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_problems_are_stored_with_project_relative_paths(project_copy):
    project = project_copy
    edited = project / "data/samples/pairs/edited"
    (edited / "broken.png").write_bytes(b"")  # unreadable
    Image.new("RGB", (64, 64)).save(edited / "uncaptioned.png")  # no caption file, no reference

    for name in ("fetch", "pair"):
        assert not run_stage(name, project / "params.yaml")["skipped"]

    stored = {
        rel: (project / rel).read_text()
        for rel in ("data/fetch/summary.json", "data/pair/report.json", "data/pair/report.md")
    }
    for rel, text in stored.items():
        assert str(project) not in text and str(project.resolve()) not in text, (rel, text[:2000])
        assert "data/samples/pairs/edited/broken.png" in text, rel
    assert "data/samples/pairs/edited/uncaptioned.png" in stored["data/pair/report.json"]
