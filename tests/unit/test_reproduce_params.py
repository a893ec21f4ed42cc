"""The logged (flattened, stringified) params rebuild the params file they came from."""

from __future__ import annotations

import yaml

from kontext_core.config import Params, load_params
from kontext_core.reproduce.params import restore
from kontext_core.reproduce.record import Recorded
from kontext_core.reproduce.run import refusal
from kontext_core.tracking.lineage import flat_params
from tests.conftest import ROOT


def test_logged_params_round_trip_with_run_time_overrides():
    file_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    run_time = dict(file_params, learning_rate=0.0005, revision="main", flux_lora_target=["to_q", "to_k"])
    run_time["accelerate"] = dict(file_params["accelerate"], num_processes=2)
    logged = flat_params(Params.model_validate(run_time))

    restored, overrides = restore(file_params, logged)

    assert flat_params(Params.model_validate(restored)) == logged
    assert {o.key: (o.in_file, o.logged) for o in overrides} == {
        "learning_rate": ("0.003", "0.0005"),
        "revision": ("None", "main"),
        "flux_lora_target": ("all", "['to_q', 'to_k']"),
        "accelerate.num_processes": ("1", "2"),
    }


def test_unchanged_params_restore_to_the_same_resolved_params():
    file_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    logged = flat_params(load_params(ROOT / "params.yaml"))
    restored, overrides = restore(file_params, logged)
    assert overrides == []
    assert Params.model_validate(restored) == load_params(ROOT / "params.yaml")


def _recorded(**tags: str) -> Recorded:
    return Recorded("models:/m/1", "run", {"git.commit": "a" * 40, "git.dirty": "false", **tags}, {})


def test_refusals_name_their_reason():
    assert refusal(_recorded(**{"kontext.device": "cpu"})) is None
    dirty = refusal(_recorded(**{"git.dirty": "true", "git.changes": "M params.yaml"}))
    assert dirty == f"trained from a dirty tree at {'a' * 12} (M params.yaml); uncommitted changes are not recorded"
    assert "no git commit" in refusal(Recorded("u", "run", {"git.commit": "unknown"}, {}))


def test_a_gpu_trained_version_is_refused_on_a_cpu_machine():
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the rebuild is attempted
    reason = refusal(_recorded(**{"kontext.device": "cuda (NVIDIA H200)"}))
    assert reason == "trained on cuda (NVIDIA H200); this machine has no GPU, and CPU kernels give other numbers"
