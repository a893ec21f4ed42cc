"""make_project(shared_init=True): the copied init is one the engine verifies and skips for real."""

from __future__ import annotations

from kontext_core.config import load_params
from kontext_core.stages import SAMPLE_DATA_DIR, TINY_MODEL_DIR, fingerprint, read_manifest, run_stage
from kontext_core.stages.engine import output_problems, outputs_intact
from tests.conftest import make_project


def test_a_shared_init_copy_is_verified_and_skipped_and_a_damaged_one_is_not(tmp_path):
    params_file = make_project(tmp_path / "a", shared_init=True)
    project = params_file.parent
    manifest = read_manifest(project, "init")
    assert manifest is not None
    # The fingerprint this project's own params give, and every recorded file re-read and re-hashed.
    assert manifest["fingerprint"] == fingerprint("init", load_params(params_file), project).value
    assert output_problems("init", project, deep=True) == []
    assert (project / TINY_MODEL_DIR / "transformer/diffusion_pytorch_model.safetensors").exists()
    assert run_stage("init", params_file)["skipped"]

    # A second project gets its own copy (editing it leaves the first alone), from the same template.
    other = make_project(tmp_path / "b", shared_init=True).parent
    sample = next((other / SAMPLE_DATA_DIR).rglob("*.png"))
    sample.write_bytes(b"not a png")
    assert not outputs_intact("init", other, manifest["fingerprint"])  # the engine would run init again
    assert outputs_intact("init", project, manifest["fingerprint"])
