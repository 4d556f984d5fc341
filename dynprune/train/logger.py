"""A run's metrics: ``log.jsonl`` always, TensorBoard scalars beside it when ``tensorboard`` is installed."""

from __future__ import annotations

import logging
from pathlib import Path

from ..outputs import RunLog

__all__ = ["RunLogger"]

log = logging.getLogger(__name__)


class RunLogger:
    """Writes each row to ``path`` (a :class:`~dynprune.outputs.RunLog`) and, with ``tensorboard``, its
    numbers as scalars ``<group>/<key>`` (lists as ``<group>/<key>/<i>``, e.g. the routing histogram) at the
    row's ``step`` into ``folder/tensorboard`` (``torch.utils.tensorboard``; skipped, with one log line,
    when the package is missing).

    Args:
        path: the JSON-lines file (None: an in-memory run, nothing is written). tensorboard: write event files too. purge_step: a resumed run's global
            step; TensorBoard drops the events a killed run had written from there on (as the JSON log is
            rewound to the checkpoint).
    """

    def __init__(self, path: str | Path | None, tensorboard: bool = True, purge_step: int | None = None):
        self.jsonl = RunLog(path) if path is not None else None
        self.tensorboard, self.purge_step = tensorboard and path is not None, purge_step
        self.writer, self._missing = None, False

    def _open(self):
        """The SummaryWriter, created at the first row (so a resumed run's purge_step is known by then)."""
        if self.writer is None and self.tensorboard and not self._missing:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._missing = True
                log.info("tensorboard is not installed: metrics go to %s only (pip install tensorboard)",
                         self.jsonl.path)
            else:
                self.writer = SummaryWriter(str(self.jsonl.path.parent / "tensorboard"), purge_step=self.purge_step)
        return self.writer

    def append(self, row: dict, group: str, step: int, scalars: dict | None = None) -> None:
        """One row: appended to the JSON-lines log; the numbers (and lists or dicts of numbers) of ``scalars``
        (default: the row) written as scalars tagged ``group/key`` at ``step``."""
        if self.jsonl is None:
            return
        self.jsonl.append(row)
        if self._open() is None:
            return
        for key, value in (row if scalars is None else scalars).items():
            if isinstance(value, bool) or key == "step":
                continue
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, step)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                for i, v in enumerate(value):
                    self.writer.add_scalar(f"{group}/{key}/{i}", v, step)
            elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
                for k, v in value.items():
                    self.writer.add_scalar(f"{group}/{key}/{k}", v, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
