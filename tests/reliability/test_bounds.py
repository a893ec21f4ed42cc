"""Input that can grow without limit is bounded, and hostile input is refused in one line: infinite
numbers, YAML alias bombs, huge caption files, dataset roots that are the machine's own folders."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.config import ConfigError, DatasetEntry
from tests.reliability.test_inputs import _one_line_error, _project
from tests.s3.conftest import free_port

pytestmark = pytest.mark.reliability

runner = CliRunner()

# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, 10 lines written.
ALIAS_BOMB = '&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
for level in range(1, 10):
    ALIAS_BOMB += f"x{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]\n"


@pytest.mark.parametrize(("key", "value"), [("learning_rate", "inf"), ("lora_alpha", "inf"), ("learning_rate", "nan")])
def test_an_infinite_number_in_set_is_refused_in_one_line(tmp_path, key, value):
    params = _project(tmp_path)
    line = _one_line_error(["run", "--no-dvc-commit", "--params", str(params), "--set", f"{key}={value}"])
    assert key in line and "finite" in line


@pytest.mark.parametrize("key", ["learning_rate", "lora_alpha", "validation_guidance"])
def test_an_infinite_number_in_params_yaml_is_refused_in_one_line(tmp_path, key):
    params = _project(tmp_path)
    params.write_text(params.read_text() + f"{key}: .inf\n")
    line = _one_line_error(["config", "check", "--params", str(params)])
    assert key in line and "finite" in line


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_yaml_alias_bomb_in_params_is_refused_in_one_line(tmp_path):
    params = _project(tmp_path)
    # The bomb as a value of a real key (what the report used: flux_lora_target: *l9).
    text = params.read_text() + "anchors:\n"
    text += "".join(f"  {line}\n" for line in ("a0: " + ALIAS_BOMB).splitlines())
    text += "flux_lora_target: *l9\n"
    params.write_text(text)
    line = _one_line_error(["config", "check", "--params", str(params)])
    assert "params.yaml" in line and "aliases add more than 100,000 values" in line


def test_a_yaml_alias_bomb_in_a_set_value_is_refused(tmp_path):
    params = _project(tmp_path)
    levels = [f"&l{level} [{','.join([f'*l{level - 1}'] * 9)}]" for level in range(1, 10)]
    bomb = "[" + ALIAS_BOMB.splitlines()[0] + ", " + ", ".join(levels) + "]"
    line = _one_line_error(["run", "--no-dvc-commit", "--params", str(params), "--set", f"flux_lora_target={bomb}"])
    assert "flux_lora_target" in line and "aliases add more than" in line


def test_plain_yaml_of_any_size_and_small_aliases_still_load():
    from kontext_core.config.params_file import ALIAS_BUDGET, expanded_size, parse_params_text

    big = {"values": list(range(2 * ALIAS_BUDGET))}  # what a plain file of that size loads as
    assert expanded_size(big)[0] == expanded_size(big)[1]
    assert parse_params_text("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


def _one_image(root: Path, name: str = "a.png") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32)).save(root / name)
    return root / name


def test_a_huge_caption_file_is_a_problem_and_is_not_read_whole(tmp_path):
    from kontext_core.data.local import MAX_CAPTION_BYTES, local_records
    from kontext_core.data.records import BAD_CAPTION

    root = tmp_path / "imgs"
    _one_image(root, "a.png")
    _one_image(root, "b.png")
    (root / "a.txt").write_text("a cat")
    with open(root / "b.txt", "wb") as fh:  # 10 MB, sparse: the size is what counts
        fh.truncate(10 << 20)
    entry = DatasetEntry(id="d", type="local", instance_data_dir=str(root), caption_strategy="textfile")
    records, problems = local_records(entry, tmp_path)
    captions = {r.key: r.caption for r in records}
    assert captions == {"a.png": "a cat", "b.png": None}
    assert [(Path(p.path).name, p.kind) for p in problems] == [("b.png", BAD_CAPTION)]
    assert f"larger than {MAX_CAPTION_BYTES >> 10} KiB" in problems[0].reason


@pytest.mark.parametrize("where", ["/", "/proc", "/etc", "project", "parent"])
def test_a_dataset_root_of_the_machine_or_around_the_project_is_refused(tmp_path, where):
    from kontext_core.data.local import local_records

    project = tmp_path / "project"
    project.mkdir()
    root = {"project": str(project), "parent": str(tmp_path)}.get(where, where)
    link = project / "data_link"
    link.symlink_to(root)  # the report's case: instance_data_dir symlinked to /
    entry = DatasetEntry(id="d", type="local", instance_data_dir="data_link", caption_strategy="filename")
    with pytest.raises(ConfigError) as refused:
        local_records(entry, project)
    message = str(refused.value)
    assert "\n" not in message and "dataset 'd'" in message and "refused" in message
    if where in ("project", "parent"):
        assert "contains the project" in message
    else:
        assert "system folder" in message or "filesystem root" in message


def _walk_only(monkeypatch, folders: set[str], empty: Path) -> list[str]:
    """Make the walk list only `folders` for real (every other folder lists empty, so a walk from "/"
    takes a moment, not the machine); returns the folders it asked to list."""
    from kontext_core.data import local

    entered: list[str] = []
    real_scandir = os.scandir

    def listing(path):
        entered.append(str(path))
        return real_scandir(path if str(path) in folders else empty)

    empty.mkdir()
    monkeypatch.setattr(local.os, "scandir", listing)
    return entered


def test_the_walk_never_enters_proc_sys_or_dev(monkeypatch, tmp_path):
    from kontext_core.data.local import find_images

    entered = _walk_only(monkeypatch, {"/"}, tmp_path / "empty")
    find_images(Path("/"))
    assert entered[0] == "/" and len(entered) > 1
    assert not {"/proc", "/sys", "/dev"} & set(entered), entered


def test_record_keys_are_relative_to_any_root(tmp_path, monkeypatch):
    from kontext_core.data.local import find_images

    _one_image(tmp_path / "sub", "pic.png")
    found, _, _ = find_images(tmp_path)
    assert [image.key for image in found] == ["sub/pic.png"]
    # The filesystem root ends in its separator: the key is the path without its leading "/" (and no
    # character less: the first one was lost).
    folders = {"/", *(str(p) for p in (tmp_path / "sub").parents), str(tmp_path / "sub")}
    _walk_only(monkeypatch, folders, tmp_path / "empty")
    keys = [image.key for image in find_images(Path("/"))[0]]
    assert keys == [str(tmp_path / "sub/pic.png").lstrip("/")]


def _aws_entry(endpoint: str, key_id: str, secret: str) -> dict:
    return {
        "id": "s3",
        "type": "aws",
        "aws_bucket_name": "kontext-bounds",
        "aws_data_prefix": "imgs",
        "aws_endpoint_url": endpoint,
        "aws_access_key_id": key_id,
        "aws_secret_access_key": secret,
        "caption_strategy": "filename",
        "conditioning": [{"type": "superresolution"}],
    }


@pytest.mark.slow
def test_config_check_prints_an_aws_entry_with_its_keys_masked(tmp_path, s3_server):
    s3_server.make_bucket("kontext-bounds")
    s3_server.upload_folder(_one_image(tmp_path / "up").parent, "kontext-bounds", "imgs")
    params = _project(tmp_path)
    entry = _aws_entry(s3_server.endpoint, s3_server.key_id, s3_server.secret) | {"aws_region_name": s3_server.region}
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    result = runner.invoke(app, ["config", "check", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert s3_server.secret not in result.output and s3_server.key_id not in result.output
    printed = json.loads(result.stdout)
    assert printed["datasets"][0]["aws_secret_access_key"] == "**********"
    assert printed["datasets"][0]["aws_access_key_id"] == "**********"


def test_a_storage_server_that_is_gone_is_one_line_without_the_secret(tmp_path):
    secret = "kontext-test-aws-secret-9f3b"
    params = _project(tmp_path)
    entry = _aws_entry(f"http://127.0.0.1:{free_port()}", "AKIAKONTEXTTEST", secret)
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    line = _one_line_error(["config", "check", "--params", str(params)])
    assert "dataset 's3'" in line and "cannot reach the endpoint" in line and secret not in line


def test_config_check_and_the_dataset_fingerprint_refuse_a_root_link_before_reading(tmp_path):
    from kontext_core.data.local_backend import LocalBackend

    params = _project(tmp_path, {"instance_data_dir": "data_link"})
    (tmp_path / "data_link").symlink_to("/")
    line = _one_line_error(["config", "check", "--params", str(params)])
    assert "dataset 'imgs'" in line and "filesystem root" in line
    entry = DatasetEntry(id="imgs", type="local", instance_data_dir="data_link", caption_strategy="filename")
    with pytest.raises(ConfigError, match="filesystem root"):  # before the digest hashes the machine
        LocalBackend().fingerprint(entry, tmp_path, tmp_path / "memo.json")


def test_the_digest_walk_keeps_keys_whole_and_skips_proc_sys_dev(tmp_path, monkeypatch):
    from kontext_core.data import scan

    _one_image(tmp_path / "sub", "pic.png")
    entered: list[str] = []
    real_scandir = os.scandir
    folders = {"/", *(str(p) for p in (tmp_path / "sub").parents), str(tmp_path / "sub")}
    (tmp_path / "empty").mkdir()

    def listing(path):
        entered.append(str(path))
        return real_scandir(path if str(path) in folders else tmp_path / "empty")

    monkeypatch.setattr(scan.os, "scandir", listing)
    keys = scan._walk_files(Path("/"))
    assert str(tmp_path / "sub/pic.png").lstrip("/") in keys
    assert all(os.path.lexists("/" + key) for key in keys)  # no key lost its first character
    assert not {"/proc", "/sys", "/dev"} & set(entered)
