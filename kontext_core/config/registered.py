"""Values of params keys that a layer above the config defines: `registry.metric` names a metric
registered in kontext_core.validate.metrics (one registration: its name, direction and function).

The config is the lowest layer (.importlinter) and in every stage's code version, so it does not
import that module (a changed metric would re-run every stage): the module is loaded by name when a
value is first checked. A metric a plugin registers is known from its registration on.
"""

from __future__ import annotations

import importlib
from typing import Any

METRIC_REGISTRY = "kontext_core.validate.metrics"


def metric_directions() -> dict[str, bool]:
    """{registered metric: greater_is_better}, in registration order."""
    table: dict[str, Any] = importlib.import_module(METRIC_REGISTRY).METRICS
    return {name: m.greater_is_better for name, m in table.items()}
