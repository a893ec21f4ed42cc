"""validation_prompt / user_prompt_library: read, checked in one line, and part of the train fingerprint."""

from __future__ import annotations

import pytest

from kontext_core.config import ConfigError, Params
from kontext_core.validate.prompts import prompt_inputs, validation_prompts


def test_no_prompts_by_default(tmp_path):
    assert validation_prompts(Params(), tmp_path) == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a JSON file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a b": "x"}', "shortname 'a b'"),
        ('{"ok": ""}', "the prompt of 'ok'"),
    ],
)
def test_a_bad_library_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "lib.json").write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        validation_prompts(Params(user_prompt_library="lib.json"), tmp_path)
    assert "user_prompt_library = 'lib.json'" in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_library_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        validation_prompts(Params(user_prompt_library="absent.json"), tmp_path)


def test_the_library_content_is_a_fingerprint_input_when_validating(tmp_path):
    lib = tmp_path / "lib.json"
    lib.write_text('{"a": "one"}')
    params = Params(user_prompt_library="lib.json", validation_step_interval=5)
    first = prompt_inputs(params, tmp_path)
    lib.write_text('{"a": "two"}')
    assert prompt_inputs(params, tmp_path) != first
    # Without validation during training the library is never read: not an input.
    assert prompt_inputs(Params(user_prompt_library="lib.json"), tmp_path) == {}
