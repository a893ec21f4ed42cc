"""Concurrency is safe, not hidden by retries: stages that Prefect runs at the same time (quantize beside
cache_vae and cache_text) never build models at the same time, and a retry that succeeds after a
failure leaves that first failure in the log with its traceback."""

from __future__ import annotations

import logging
import threading

import pytest

pytestmark = pytest.mark.reliability


@pytest.mark.slow
def test_quantizing_beside_a_model_load_on_another_thread_is_safe(reliable_built):
    """The race of the report: diffusers loads inside accelerate's `init_empty_weights`, which patches
    `nn.Module.register_parameter` for the whole process; quanto registering its quantized weights on
    another thread then failed (`WeightQBytesTensor.__new__() ... '_qtype'`, or weights on the meta
    device). Without the lock this fails on the first quantization; with it, never."""
    from kontext_core.config import load_params
    from kontext_core.model.load import load_transformer, load_vae
    from kontext_core.model.quantize import quantize_transformer, quantized_module_names

    project = reliable_built
    params = load_params(project / "params.yaml")
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_loading() -> None:  # what cache_vae does beside quantize
        try:
            while not stop.is_set():
                load_vae(params, project)
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    loader = threading.Thread(target=keep_loading)
    loader.start()
    try:
        for _ in range(3):
            model = quantize_transformer(load_transformer(params, project), "int8-quanto")
            assert quantized_module_names(model)
    finally:
        stop.set()
        loader.join()
    assert errors == []


def test_a_retry_that_heals_keeps_the_first_failure_with_its_traceback(prefect_harness):
    from prefect import flow, task

    from tasks.stage_tasks import _retry_unless_config_error

    calls: list[int] = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=_retry_unless_config_error)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("WeightQBytesTensor.__new__() missing 1 required positional argument: '_qtype'")
        return "healed"

    @flow
    def run_flaky() -> str:
        return flaky()

    records: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tasks.stage_tasks")
    logger.addHandler(collect)
    try:
        assert run_flaky() == "healed"
    finally:
        logger.removeHandler(collect)
    [record] = records
    assert record.levelno == logging.WARNING and "Prefect retries it" in record.getMessage()
    assert record.exc_info and "'_qtype'" in str(record.exc_info[1])
    text = logging.Formatter().format(record)
    assert "Traceback" in text and "in flaky" in text
