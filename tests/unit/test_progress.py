"""Progress displays: a bar that stays on screen in a terminal, bounded plain lines anywhere else."""

from __future__ import annotations

import io
import os

import pytest

from kontext_core.progress import MAX_LINES_PER_BAR, MODE_ENV, Progress, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)


@pytest.mark.parametrize("total", [1, 7, 20, 21, 100, 999, 100_000])
def test_lines_mode_writes_at_most_one_line_per_five_percent(total):
    out = io.StringIO()
    for _ in track(range(total), "scan", stream=out):
        pass
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= min(total, 100 // 5)
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith(f"scan: 100% {total}/{total} it [done in ")
    percents = [int(line.split(":")[1].split("%")[0]) for line in lines]
    assert percents == sorted(set(percents))


def test_lines_show_eta_and_postfix_and_a_loop_that_stops_short_says_so():
    out = io.StringIO()
    with Progress(40, "train", "step", stream=out) as bar:
        for step in range(30):
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) <= MAX_LINES_PER_BAR
    assert "ETA" in lines[0] and "loss=" in lines[0]
    assert lines[-1].startswith("train:  75% 30/40 step") and lines[-1].endswith("(stopped)")


def test_an_empty_loop_writes_nothing_and_a_resumed_one_counts_from_where_it_was():
    out = io.StringIO()
    with Progress(0, "cache_vae", stream=out):
        pass
    assert out.getvalue() == ""
    with Progress(100, "train", stream=out, initial=50) as bar:
        bar.update(50)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert "100% 100/100" in out.getvalue()


def test_terminal_gets_a_bar_that_stays_when_done():
    out = Terminal()
    for _ in track(range(50), "degrade", unit="image", stream=out):
        pass
    text = out.getvalue()
    assert "\r" in text
    # leave=True: the finished bar is the last thing on screen, at 100 %, not erased.
    assert "degrade: 100%" in text.rsplit("\r", 1)[-1]
    assert text.endswith("\n")


def test_the_environment_overrides_the_choice(monkeypatch):
    out = Terminal()
    monkeypatch.setenv(MODE_ENV, "off")
    for _ in track(range(10), "x", stream=out):
        pass
    assert out.getvalue() == ""
    monkeypatch.setenv(MODE_ENV, "lines")
    for _ in track(range(10), "x", stream=out):
        pass
    assert "\r" not in out.getvalue() and out.getvalue().count("\n") == 10


def test_outside_a_terminal_the_libraries_bars_are_turned_off(monkeypatch):
    import datasets.utils as datasets_utils
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    from kontext_core.progress import quiet_library_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    quiet_library_bars(Terminal())
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    try:
        quiet_library_bars(io.StringIO())
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert not diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
        assert hub_utils.are_progress_bars_disabled()
        assert datasets_utils.are_progress_bars_disabled()
    finally:
        datasets_utils.enable_progress_bars()
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        hub_utils.enable_progress_bars()



def test_libraries_imported_later_are_turned_off_on_import_and_not_imported_for_it():
    """A `kontext` process that never loads a model (`kontext stage fetch`, an up-to-date run) must not
    pay seconds importing diffusers, transformers and datasets only to switch their bars off."""
    import subprocess
    import sys

    script = (
        "import io, sys\n"
        "from kontext_core.progress import quiet_library_bars\n"
        "quiet_library_bars(io.StringIO())\n"
        "print(sorted(m for m in ('diffusers', 'transformers', 'datasets', 'torch') if m in sys.modules))\n"
        "import diffusers.utils.logging as d, transformers.utils.logging as t, datasets.utils as ds\n"
        "import huggingface_hub.utils as h\n"
        "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), ds.are_progress_bars_disabled(),"
        " h.are_progress_bars_disabled())\n"
        "print(type(d.__loader__).__name__)\n"
        "print([type(f).__name__ for f in sys.meta_path if 'SwitchOff' in type(f).__name__])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLFLOW_ENABLE"))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported, switches, loader, waiting = done.stdout.strip().splitlines()[-4:]
    assert imported == "[]"
    assert switches == "False False True True"
    assert loader == "SourceFileLoader"  # the module keeps its own loader
    assert waiting == "[]"  # all four switched off: the import hook is gone

def test_the_same_lines_go_to_the_progress_logger_in_every_display(monkeypatch):
    import io
    import logging

    from kontext_core.progress import log, progress

    got: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    handler = Collect(logging.INFO)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for mode in ("lines", "bar"):
            monkeypatch.setenv("KONTEXT_PROGRESS", mode)
            got.clear()
            with progress(40, "train", "step", stream=io.StringIO()) as bar:
                for _ in range(40):
                    bar.update(1)
            assert len(got) == 20 and got[-1].startswith("train: 100% 40/40 step [done in"), mode
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
