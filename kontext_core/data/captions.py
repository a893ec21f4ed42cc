"""SimpleTuner's instance-prompt rules, applied to a record's caption by every dataset backend.

`only_instance_prompt` replaces every caption with `instance_prompt`; `prepend_instance_prompt`
puts it in front of the caption (or uses it alone where there is no caption).
"""

from __future__ import annotations

from kontext_core.config import DatasetEntry


def uses_only_instance_prompt(entry: DatasetEntry) -> bool:
    return entry.only_instance_prompt and entry.instance_prompt is not None


def with_instance_prompt(entry: DatasetEntry, caption: str | None) -> str | None:
    if entry.instance_prompt is None:
        return caption
    if entry.only_instance_prompt:
        return entry.instance_prompt
    if entry.prepend_instance_prompt:
        return f"{entry.instance_prompt} {caption}" if caption else entry.instance_prompt
    return caption
