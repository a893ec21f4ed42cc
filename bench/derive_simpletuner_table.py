"""Derive SimpleTuner's key table (default and accepted values of each config key) from its source.

SimpleTuner builds its argument parser from a field registry: one `ConfigField(name=..., arg_name=...,
default_value=..., choices=[...])` call per key; config.json keys are the option names (`arg_name`).
This reads those calls as syntax (nothing of SimpleTuner is imported or run) from a git directory at
a commit and writes config/simpletuner/defaults@<commit>.json:

    python bench/derive_simpletuner_table.py GIT_DIR [COMMIT] [--out config/simpletuner]

Only literal defaults and choices are recorded; a value computed at run time is left out ("default"
absent) rather than guessed. The dataset-entry defaults of its data backend factory are not in the
registry; they live in the table's "dataset" block, written by hand with the line they come from.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

REGISTRY_DIRS = (
    "simpletuner/simpletuner_sdk/server/services/field_registry/sections/",
    "simpletuner/helpers/models/",
)

OPTIMIZER_TABLE = "simpletuner/helpers/training/optimizer_param.py"

# The dataset defaults SimpleTuner's factory and config classes apply (read by hand; the place each
# comes from is recorded next to it so that a later commit can be checked the same way).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "crop": {"default": False, "from": "helpers/data_backend/config/image.py: backend_dict.get('crop', False)"},
    "crop_style": {
        "default": "random",
        "choices": ["random", "corner", "center", "centre", "face"],
        "from": "helpers/data_backend/factory.py: crop_styles / output['config']['crop_style'] = 'random'",
    },
    "crop_aspect": {
        "default": "square",
        "choices": ["square", "preserve", "random", "closest"],
        "from": "helpers/data_backend/factory.py: crop_aspect choices / 'square'",
    },
    "resolution_type": {
        "choices": ["pixel", "area", "pixel_area"],
        "from": "helpers/data_backend/config/validators.py: valid_resolution_types",
    },
}


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return False, None


def _fields(source: str) -> list[dict[str, Any]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigField"):
            continue
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        ok, name = _literal(kwargs["name"]) if "name" in kwargs else (False, None)
        if not ok or not isinstance(name, str):
            continue
        entry: dict[str, Any] = {"name": name}
        ok, arg = _literal(kwargs["arg_name"]) if "arg_name" in kwargs else (False, None)
        if ok and isinstance(arg, str) and arg.startswith("--") and arg.lstrip("-") != name:
            # config.json keys are the parser's option names; the registry's own name may differ.
            entry["name"], entry["field"] = arg.lstrip("-"), name
        if "field_type" in kwargs and isinstance(kwargs["field_type"], ast.Attribute):
            entry["type"] = kwargs["field_type"].attr.lower()
        if "default_value" in kwargs:
            ok, value = _literal(kwargs["default_value"])
            if ok:
                entry["default"] = value
        if "choices" in kwargs:
            ok, value = _literal(kwargs["choices"])
            if ok and isinstance(value, list):
                entry["choices"] = [c.get("value") if isinstance(c, dict) else c for c in value]
        if "aliases" in kwargs:
            ok, value = _literal(kwargs["aliases"])
            if ok and value:
                entry["aliases"] = [str(a).lstrip("-") for a in value]
        found.append(entry)
    return found


def derive(git_dir: str, commit: str) -> dict[str, Any]:
    commit = _git(git_dir, "rev-parse", commit).strip()
    keys: dict[str, dict[str, Any]] = {}
    for folder in REGISTRY_DIRS:
        for path in sorted(_git(git_dir, "ls-tree", "-r", "--name-only", commit, folder).split()):
            if not path.endswith(".py"):
                continue
            source = _git(git_dir, "show", f"{commit}:{path}")
            if "ConfigField(" not in source:
                continue
            for entry in _fields(source):
                # The first registration of a key wins, as in SimpleTuner's parser (it skips repeats).
                keys.setdefault(entry.pop("name"), {**entry, "source": path.removeprefix("simpletuner/")})
    # The optimizer's choices are filled at run time from its optimizer table: its names are that table's keys.
    source = _git(git_dir, "show", f"{commit}:{OPTIMIZER_TABLE}")
    names = sorted(set(re.findall(r'^\s+"([a-z][\w.+-]*)": \{', source, re.MULTILINE)) - {"default_settings"})
    keys["optimizer"]["choices"] = names
    keys["optimizer"]["choices_from"] = OPTIMIZER_TABLE.removeprefix("simpletuner/")
    return {"repository": "bghira/SimpleTuner", "commit": commit, "keys": keys, "dataset": DATASET_DEFAULTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir")
    parser.add_argument("commit", nargs="?", default="HEAD")
    parser.add_argument("--out", default="config/simpletuner")
    args = parser.parse_args()
    table = derive(args.git_dir, args.commit)
    out = Path(args.out) / f"defaults@{table['commit'][:12]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1, sort_keys=True, default=str) + "\n")
    print(f"{out}: {len(table['keys'])} keys from {table['repository']}@{table['commit']}")


if __name__ == "__main__":
    main()
