"""What a run needs recorded to be rebuilt later: library versions, the device, the uncommitted files.

`kontext reproduce` compares these with the machine it runs on: a byte-identical adapter is only
promised for the same libraries on the same kind of device (CPU float32 training is deterministic;
CUDA kernels are not in general).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The distributions whose versions change what training computes.
LIBRARIES = ("torch", "diffusers", "peft", "optimum-quanto", "safetensors")
ENV_PREFIX = "kontext.env."
DEVICE_TAG = "kontext.device"
CHANGES_TAG = "git.changes"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_type() -> str:
    """The device training picks (kontext_core.model.load.training_device), with the GPU's name."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def uncommitted_changes(workdir: Path, limit: int = 20) -> str:
    """`git status --porcelain` of tracked files, so "dirty" comes with which files were changed."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    more = f"; … {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def environment_tags(workdir: Path) -> dict[str, str]:
    tags = {f"{ENV_PREFIX}{name}": version for name, version in library_versions().items()}
    tags[DEVICE_TAG] = device_type()
    if changes := uncommitted_changes(workdir):
        tags[CHANGES_TAG] = changes
    return tags
