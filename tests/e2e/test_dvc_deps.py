"""DVC sees the user's own dataset folders: an image changed there makes `dvc status` report fetch.

The dataset file here points at folders outside the demo layout (`mydata/`); dvc.yaml is
regenerated from it, `kontext dvc-yaml --check` catches a stale one.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from PIL import Image

from kontext_core.data.samples import write_sample_data
from tests.conftest import write_params
from tests.e2e.dvc_repo import dvc, git, kontext, new_dvc_project, ok, porcelain, ran_stages

pytestmark = pytest.mark.slow

MY_DATASETS = [
    {
        "id": "my-edits",
        "type": "local",
        "instance_data_dir": "mydata/edits",
        "conditioning_data": ["my-refs"],
        "caption_strategy": "textfile",
        "resolution": 64,
        "resolution_type": "pixel_area",
    },
    {
        "id": "my-refs",
        "type": "local",
        "instance_data_dir": "mydata/refs",
        "conditioning_type": "reference_strict",
        "caption_strategy": None,
        "resolution": 64,
        "resolution_type": "pixel_area",
    },
]


def test_changing_an_image_in_a_user_folder_makes_dvc_rerun_fetch(tmp_path, mlflow_template):
    project = new_dvc_project(tmp_path / "clone", mlflow_template)
    samples = write_sample_data(tmp_path / "gen", count=4, size=64, seed=0)
    shutil.copytree(samples / "pairs/edited", project / "mydata/edits")
    shutil.copytree(samples / "pairs/reference", project / "mydata/refs")
    (project / "config/mine.json").write_text(json.dumps(MY_DATASETS, indent=2))
    write_params(project / "params.yaml", data_backend_config="config/mine.json", eval_dataset_id=None)

    stale = kontext(project, "dvc-yaml", "--check")
    assert stale.returncode == 1 and "out of date" in stale.stderr
    ok(kontext(project, "dvc-yaml"))
    ok(kontext(project, "dvc-yaml", "--check"))
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert {"config/mine.json", "mydata/edits", "mydata/refs"} <= set(stages["fetch"]["deps"])
    assert "config/mine.json" in stages["pair"]["deps"]
    git(project, "add", "-A")
    git(project, "commit", "-qm", "my own data")

    assert ran_stages(ok(dvc(project, "repro", "pair")).stdout) == ["init", "fetch", "pair"]
    assert "up to date" in ok(dvc(project, "status", "pair")).stdout.lower()
    git(project, "add", "-A")
    git(project, "commit", "-qm", "pairs of my own data")

    # One edit image replaced by one of another size: what fetch records changes, and so the pairs.
    first = sorted((project / "mydata/edits").glob("*.png"))[0]
    Image.new("RGB", (80, 64), (10, 200, 30)).save(first)
    status = json.loads(ok(dvc(project, "status", "--json")).stdout)
    assert "fetch" in status, status
    assert {"changed deps": {"mydata/edits": "modified"}} in status["fetch"]
    assert ran_stages(ok(dvc(project, "repro", "pair")).stdout) == ["fetch", "pair"]
    assert "up to date" in ok(dvc(project, "status", "pair")).stdout.lower()
    assert set(porcelain(project).splitlines()) == {" M dvc.lock", f" M mydata/edits/{first.name}"}
