"""The closing summary of `kontext run`: each stage with ran/skipped and its seconds, then the final
training loss, the validation metric and the champion decision, read from the stages' manifests."""

from __future__ import annotations

from typing import Any


def run_outcome(manifests: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Loss, metric and champion decision from the train, validate and register manifests.

    A skipped stage's manifest is the one its last run wrote, so a no-op run still reports them.
    """
    train = manifests.get("train", {}).get("info", {})
    validate = manifests.get("validate", {}).get("info", {})
    register = manifests.get("register", {}).get("info", {})
    return {
        "final_loss": train.get("loss_last"),
        "steps": train.get("steps"),
        "metric": metric,
        "metric_value": validate.get(metric),
        "metric_base": validate.get(f"{metric}_base"),
        "model_uri": register.get("model_uri"),
        "became_champion": register.get("became_champion"),
        "previous_champion_metric": register.get("champion_metric"),
    }


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The per-stage table and the outcome, as the CLI prints them."""
    seconds = result.get("seconds", {})
    lines = [f"{'stage':<12}{'status':<9}{'seconds':>9}"]
    for name, status in result["stages"].items():
        lines.append(f"{name:<12}{status:<9}{seconds.get(name, float('nan')):>9.2f}")
    lines.append(f"{'total':<21}{sum(seconds.values()):>9.2f}")
    outcome = result.get("outcome", {})
    steps = outcome.get("steps")
    lines.append(f"final loss: {_number(outcome.get('final_loss'))} (mean of the last fifth of {steps} steps)")
    metric = outcome.get("metric", "metric")
    lines.append(
        f"validation {metric}: {_number(outcome.get('metric_value'))} "
        f"(base model without the adapter: {_number(outcome.get('metric_base'))})"
    )
    previous = outcome.get("previous_champion_metric")
    # A skipped register stage reports the decision its last run made.
    earlier = " (decided by an earlier run)" if result["stages"].get("register") == "skipped" else ""
    if outcome.get("became_champion"):
        against = "no champion before" if previous is None else f"previous champion {_number(previous)}"
        lines.append(f"champion: {outcome.get('model_uri')} is the new champion ({against}){earlier}")
    elif outcome.get("became_champion") is False:
        lines.append(
            f"champion: unchanged; {outcome.get('model_uri')} did not beat the champion's "
            f"{metric} {_number(previous)}{earlier}"
        )
    return lines
