"""A fourth validation metric, written the way a user would add one: the mean absolute pixel error of
each edit against its target (0 to 255, lower is better). Nothing in a stage, the registry or a report
names it: registered, it is selectable by `registry.metric`, scored by validate and ranked by register."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kontext_core.validate.metrics import Metric


def mean_abs_error(output: Image.Image, target: Image.Image) -> float:
    a = np.asarray(output.convert("RGB"), dtype=np.float64)
    b = np.asarray(target.convert("RGB"), dtype=np.float64)
    return float(np.mean(np.abs(a - b)))


TOY_METRIC = Metric(
    "toy_mae", False, "mean absolute pixel error of the edits against their targets", mean_abs_error, "MAE"
)
