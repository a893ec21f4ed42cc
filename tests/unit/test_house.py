"""The house's rules, checked: stage versions follow their import closure, and the import contract
(.importlinter) holds on the tree and breaks on a wrong-way import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

_VERSIONS = """
import json, kontext_core
from kontext_core.stages import STAGES
assert kontext_core.__file__.startswith({root!r}), kontext_core.__file__
print(json.dumps({{name: spec.code_version() for name, spec in STAGES.items()}}))
"""


def _copy_tree(dest: Path) -> Path:
    for package in ("kontext_core", "tasks", "flows"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", dest / ".importlinter")
    return dest


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def _versions(root: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _VERSIONS.format(root=str(root))],
        env=_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def test_editing_a_module_changes_the_versions_of_the_stages_that_import_it_and_no_other(tmp_path):
    root = _copy_tree(tmp_path)
    before = _versions(root)

    _touch(root / "kontext_core/data/pairing.py")
    after_pairing = _versions(root)
    changed = {name for name in before if before[name] != after_pairing[name]}
    # degrade imports pairing's DEGRADE_DIR; nothing downstream imports pairing itself.
    assert changed == {"pair", "degrade"}

    _touch(root / "kontext_core/model/quantize.py")
    after_quantize = _versions(root)
    changed = {name for name in before if after_pairing[name] != after_quantize[name]}
    # register re-scores the champion on the same frozen base, so it reads quantized models too.
    assert changed == {"quantize", "train", "validate", "register"}


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS)], cwd=root, env=_env(root), capture_output=True, text=True)


def test_the_import_contract_holds_on_the_tree():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_import_contract_breaks_on_a_wrong_way_import(tmp_path):
    root = _copy_tree(tmp_path)
    config = root / "kontext_core/config/base.py"
    # The bottom layer reaching up into the stages (the circle the split removed).
    config.write_text(config.read_text() + "\nfrom kontext_core.stages.registry import STAGES  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "kontext_core layers" in result.stdout and "BROKEN" in result.stdout
    assert "kontext_core.config.base -> kontext_core.stages.registry" in result.stdout


def test_the_library_never_imports_prefect(tmp_path):
    root = _copy_tree(tmp_path)
    images = root / "kontext_core/data/images.py"
    images.write_text(images.read_text() + "\nimport prefect  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "kontext_core never imports Prefect BROKEN" in result.stdout.replace("\n", " ")
