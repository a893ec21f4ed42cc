"""Progress with an ETA for every loop that can take seconds: scan, pair, degrade, caches, train, validate.

In a terminal it is a tqdm bar that stays on screen when done (the finished bar is the record of what
ran). Anywhere else (a log file, CI, a pipe) a redrawn bar would be hundreds of lines of carriage
returns, so it writes plain lines instead, at most one each time another 5 % is done, plus one closing
line when the loop stopped short of 100 %: a stage's output stays bounded whatever its size.

`KONTEXT_PROGRESS` overrides the choice: `bar`, `lines` or `off` (default `auto`).

Whatever the display, the same bounded lines also go to the `kontext_core.progress` logger (INFO).
It does not propagate (the display already shows them) and has no handler of its own: a flow run
attaches one to send training progress to the orchestrator's run log (flows/run_log.py).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

MODE_ENV = "KONTEXT_PROGRESS"
# A plain line each time another STEP_PERCENT of the total is done.
STEP_PERCENT = 5
MAX_LINES_PER_BAR = 100 // STEP_PERCENT + 1

T = TypeVar("T")
log = logging.getLogger(__name__)
log.propagate = False


def _mode(stream: TextIO) -> str:
    mode = os.environ.get(MODE_ENV, "auto").strip().lower()
    if mode in ("bar", "lines", "off"):
        return mode
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# Libraries whose own bars (model loading, shard writing) would otherwise redraw into a log.
_LIBRARY_BARS = {
    "huggingface_hub.utils": "disable_progress_bars",
    "transformers.utils.logging": "disable_progress_bar",
    "diffusers.utils.logging": "disable_progress_bar",
    "datasets.utils": "disable_progress_bars",
}


class _SwitchOffOnImport(importlib.abc.MetaPathFinder):
    """Calls a library's bar switch right after the library's module is first imported.

    Importing diffusers, transformers and datasets only to switch their bars off costs seconds (torch,
    torch._dynamo, pyarrow) in every `kontext` process, including the many that never load a model
    (`kontext stage fetch` under DVC, an up-to-date `kontext run`). The switch waits for the import."""

    def __init__(self, switches: dict[str, str]) -> None:
        self.switches = dict(switches)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        function = self.switches.get(fullname)
        if function is None:
            return None
        spec = _spec_without(self, fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        switches = self.switches
        finder = self

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                # The module keeps its own loader (source lookups, resources): this one only runs it.
                module.__loader__ = module.__spec__.loader = loader
                loader.exec_module(module)
                switches.pop(fullname, None)
                getattr(module, function, lambda: None)()
                if not switches and finder in sys.meta_path:
                    sys.meta_path.remove(finder)  # every library switched off: nothing left to wait for

        spec.loader = _Then()
        return spec


def _spec_without(finder: importlib.abc.MetaPathFinder, fullname: str, path: Any, target: Any) -> Any:
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def quiet_library_bars(stream: TextIO | None = None) -> None:
    """Outside a terminal, turn off the tqdm bars of huggingface_hub, transformers, diffusers, datasets
    and MLflow's artifact transfers.

    Their bars redraw with carriage returns, which a log keeps as one long line per redraw. Each
    library keeps its own switch (diffusers' is on at import whatever the environment says): a library
    already imported is switched off now, the others as soon as they are imported (`_SwitchOffOnImport`).
    """
    if _mode(stream if stream is not None else sys.stderr) == "bar":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    later = {}
    for module_name, function in _LIBRARY_BARS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(module, function, lambda: None)()
        else:
            later[module_name] = function
    waiting = next((f for f in sys.meta_path if isinstance(f, _SwitchOffOnImport)), None)
    if waiting is not None:
        waiting.switches.update(later)
    elif later:
        sys.meta_path.insert(0, _SwitchOffOnImport(later))


class Progress:
    """One progress display: `update(n)`, `set_postfix(**values)`, `close()` (or use it as a context)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        stream: TextIO | None = None,
        disable: bool = False,
        initial: int = 0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.lines = 0
        self._last_step = (100 * initial // total) // STEP_PERCENT if total else 0
        self._closed = False
        # Nothing to show for an empty loop (a cache stage whose entries all exist): no bar, no line.
        mode = "off" if disable or total == 0 else _mode(self.stream)
        self.mode = mode
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=self.stream,
                leave=True,
                mininterval=0.5,
                dynamic_ncols=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self._bar is not None:
            # refresh=False: redrawing on every call costs a terminal write per training step.
            self._bar.set_postfix(values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        if self.mode != "off" and self.total:
            step = (100 * min(self.n, self.total) // self.total) // STEP_PERCENT
            if step > self._last_step:
                self._last_step = step
                self._line()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.mode != "off" and (self.total is None or self.n < self.total):
            # The 100 % line already closes a finished loop; say where one that stopped short ended.
            self._line(stopped=True)

    def _line(self, stopped: bool = False) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            head = f"{self.desc}: {100 * self.n // self.total:3d}% {self.n}/{self.total} {self.unit}"
        else:
            head = f"{self.desc}: {self.n} {self.unit}"
        timing = f"{_duration(elapsed)}, {rate:.1f} {self.unit}/s"
        if self.total and self.n < self.total and not stopped:
            timing += f", ETA {_duration((self.total - self.n) / rate) if rate > 0 else '?'}"
        elif self.total and self.n >= self.total:
            timing = f"done in {timing}"
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        line = f"{head} [{timing}]{extra}{' (stopped)' if stopped else ''}"
        log.info(line)
        if self.mode == "lines":
            self.stream.write(line + "\n")
            self.stream.flush()
            self.lines += 1


def progress(total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> Progress:
    """A progress display for `total` items (None when unknown)."""
    return Progress(total, desc, unit, **kwargs)


def track(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any) -> Iterator[T]:
    """Yield from `iterable` with a progress display (`total` defaults to its length)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
