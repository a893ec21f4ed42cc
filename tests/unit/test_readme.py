"""The README's key block lists every top-level parameter with its real default."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from kontext_core.config import Params

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- params-defaults:"


def _readme_defaults() -> dict:
    text = README.read_text()
    block = text[text.index(MARKER) :].split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def test_readme_lists_every_top_level_key_with_its_default():
    defaults = {
        name: field.default
        for name, field in Params.model_fields.items()
        if not (isinstance(field.default, BaseModel))  # sections are described in prose
    }
    documented = _readme_defaults()
    assert sorted(documented) == sorted(defaults)
    # The block must also be a valid params file that means the defaults.
    assert Params.model_validate(documented) == Params()
