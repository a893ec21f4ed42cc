"""SimpleTuner's `validation_prompt` and `user_prompt_library`: instructions that validation during
training renders on the eval references, beside the scored edits of the eval pairs' own captions.

The library is SimpleTuner's JSON object of shortname -> prompt; `validation_prompt` joins it under
the shortname `validation_prompt`. A missing or malformed library is one ConfigError naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kontext_core.config import ConfigError, Params
from kontext_core.fsutil import sha256_file

SHORTNAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def library_path(params: Params, workdir: Path) -> Path | None:
    if not params.user_prompt_library:
        return None
    path = Path(params.user_prompt_library)
    return path if path.is_absolute() else workdir / path


def validation_prompts(params: Params, workdir: Path) -> dict[str, str]:
    """Shortname -> prompt, in the library's order, `validation_prompt` first."""
    prompts: dict[str, str] = {}
    if params.validation_prompt:
        prompts["validation_prompt"] = params.validation_prompt
    path = library_path(params, workdir)
    if path is None:
        return prompts
    where = f"user_prompt_library = {params.user_prompt_library!r}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file ({path})")
    try:
        library = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not a JSON file ({exc})") from None
    if not isinstance(library, dict) or not library:
        raise ConfigError(f"{where}: expected a JSON object of shortname -> prompt")
    for shortname, prompt in library.items():
        if not SHORTNAME.match(shortname):
            raise ConfigError(f"{where}: shortname {shortname!r} may hold only letters, digits, '_', '-', '.'")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: the prompt of {shortname!r} must be a non-empty string")
        prompts[shortname] = prompt
    return prompts


def prompt_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The library's content hash (the train stage's fingerprint follows an edit of the file)."""
    path = library_path(params, workdir)
    if path is None or not params.validation_step_interval:
        return {}
    validation_prompts(params, workdir)  # refuse a bad library before anything runs
    return {"user_prompt_library": sha256_file(path)}
