"""The three answers of `kontext reproduce`, how they read, and where they are recorded."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow

from kontext_core.reproduce.compare import AdapterComparison
from kontext_core.reproduce.params import Override
from kontext_core.reproduce.record import Recorded

IDENTICAL, DIFFERENT, CANNOT = "identical", "different", "cannot reproduce"
TAG = "kontext.reproduce"


@dataclass
class Verdict:
    answer: str
    reason: str
    uri: str
    recorded: Recorded | None = None
    comparison: AdapterComparison | None = None
    overrides: list[Override] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stages_run: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.uri}: {self.answer}" + (f" ({self.reason})" if self.reason else "")]
        if self.recorded is not None:
            out.append(f"  run {self.recorded.run_id}, commit {self.recorded.commit[:12]}")
        for o in self.overrides:
            out.append(f"  restored run-time override {o.key}: {o.logged} (params.yaml: {o.in_file})")
        if self.stages_run:
            out.append(f"  rebuilt: {', '.join(self.stages_run)} in {self.seconds:.0f} s")
        if (c := self.comparison) is not None:
            out.append(f"  registered adapter sha256 {c.registered_sha256[:16]}…")
            out.append(f"  rebuilt adapter    sha256 {c.rebuilt_sha256[:16]}…")
            if c.max_abs_diff is not None:
                out.append(f"  max abs tensor difference {c.max_abs_diff:.3g} {c.key_difference}".rstrip())
        out += [f"  note: {note}" for note in self.notes]
        return out

    def markdown(self) -> str:
        return f"# Reproduction of `{self.uri}`: **{self.answer}**\n\n```\n" + "\n".join(self.lines()) + "\n```\n"

    def tags(self) -> dict[str, str]:
        tags = {TAG: self.answer, f"{TAG}.reason": self.reason or "-"}
        if self.comparison is not None:
            tags[f"{TAG}.rebuilt_sha256"] = self.comparison.rebuilt_sha256
        return tags


def record(verdict: Verdict, client: mlflow.MlflowClient) -> None:
    """The answer as tags on the model version (or on the run for a runs:/ URI)."""
    recorded = verdict.recorded
    if recorded is None:
        return
    for key, value in verdict.tags().items():
        if recorded.version is not None and recorded.model_name is not None:
            client.set_model_version_tag(recorded.model_name, recorded.version, key, value[:5000])
        else:
            client.set_tag(recorded.run_id, key, value[:5000])
