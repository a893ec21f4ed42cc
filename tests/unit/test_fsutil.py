import pytest

from kontext_core.fsutil import atomic_dir, atomic_path, sha256_tree, write_json, write_json_array


def test_atomic_path_leaves_nothing_on_crash(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_old_output_on_crash(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "weights").write_text("new-but-partial")
            raise RuntimeError("killed")
    assert (dest / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_dir_replaces_on_success(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "stale").write_text("x")
    with atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["weights"]


def test_tree_hash_tracks_content_and_names(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    first = sha256_tree(tmp_path)
    write_json(tmp_path / "a.json", {"x": 2})
    assert sha256_tree(tmp_path) != first
    write_json(tmp_path / "a.json", {"x": 1})
    assert sha256_tree(tmp_path) == first
    (tmp_path / "a.json").rename(tmp_path / "b.json")
    assert sha256_tree(tmp_path) != first


def test_file_hash_is_recomputed_when_the_file_changes(tmp_path):
    import os

    from kontext_core.fsutil import sha256_file

    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = sha256_file(path)
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert sha256_file(path) != first


def test_write_json_array_streams_the_bytes_write_json_writes(tmp_path):
    # The pair table is written element by element; its bytes (and so its hash) must stay those of
    # one json.dumps of the whole list, for any nesting, empty containers and escaped newlines.
    tables = [
        [],
        [1],
        [{"b": [1, {"c": "two\nlines"}], "a": {}, "d": [], "e": None}],
        [{"z": "é", "a": 2.5}, [], {}, "text", [[1, 2], [3]], True],
    ]
    for table in tables:
        write_json(tmp_path / "whole.json", table)
        count = write_json_array(tmp_path / "streamed.json", iter(table))
        assert count == len(table)
        assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes(), table


def test_write_json_array_leaves_nothing_when_the_items_fail(tmp_path):
    def items():
        yield {"a": 1}
        raise RuntimeError("broken input")

    (tmp_path / "t.json").write_text("old\n")
    try:
        write_json_array(tmp_path / "t.json", items())
    except RuntimeError:
        pass
    assert (tmp_path / "t.json").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
