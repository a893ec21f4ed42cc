"""The project's own logging in the flow-run log: stage summaries, counts, warnings, the decision.

Prefect sends only its own loggers to the API. For the length of a flow run, `run_log_bridge`
attaches Prefect's API handler to the project's loggers (`kontext_core`, `flows`, `tasks`). Records
from a task's thread carry that task run; records from other threads of this process (a library's
worker thread) are attached to the flow run; records from child processes are not sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

# kontext_core.progress does not propagate (its lines are already on screen): it gets the handler itself.
PROJECT_LOGGERS = ("kontext_core", "kontext_core.progress", "flows", "tasks")
LOG_FORMAT = "%(message)s"


class _ThisRun(logging.Filter):
    def __init__(self, flow_run_id: UUID) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        if os.getpid() != self.pid:
            return False
        if getattr(record, "flow_run_id", None) is None and not (FlowRunContext.get() or TaskRunContext.get()):
            record.flow_run_id = self.flow_run_id
        return True


@contextmanager
def run_log_bridge(flow_run_id: UUID, level: int = logging.INFO) -> Iterator[None]:
    handler = APILogHandler(level=level)
    handler.addFilter(_ThisRun(flow_run_id))
    # The UI shows each line's logger in a column of its own: the message alone, no repeated name.
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    saved = []
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, old in saved:
            logger.removeHandler(handler)
            logger.setLevel(old)
