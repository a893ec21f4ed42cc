"""The closing lines of `kontext run`: how base and adapter scored, and what the registry decided."""

from __future__ import annotations

import json
from pathlib import Path

from kontext_core.config import Params
from kontext_core.stages.validate import VALIDATE_METRICS

REGISTRATION = "artifacts/register/registration.json"


def run_summary(params: Params, workdir: Path) -> list[str]:
    metrics = json.loads((workdir / VALIDATE_METRICS).read_text())
    registration = json.loads((workdir / REGISTRATION).read_text())
    metric = params.registry.metric
    lines = [f"val/psnr base {metrics['psnr_base']:.2f}, lora {metrics['psnr']:.2f} (dB against the targets)"]
    if metric != "psnr" and metric in metrics:
        base = metrics.get(f"{metric}_base")
        both = f"base {base:.4f}, lora {metrics[metric]:.4f}" if base is not None else f"{metrics[metric]:.4f}"
        lines.append(f"val/{metric} {both}")
    alias = params.registry.champion_alias
    score = f"val/{metric} {metrics[metric]:.4f}" if metric in metrics else f"val/{metric}"
    previous = registration.get("champion_metric")
    if registration["became_champion"]:
        against = "no previous champion" if previous is None else f"previous @{alias}: {previous:.4f}"
        lines.append(f"champion decision: version {registration['version']} is @{alias} ({score}; {against})")
    else:
        lines.append(
            f"champion decision: version {registration['version']} not promoted ({score}; @{alias} has {previous:.4f})"
        )
    return lines
