"""Progress of long loops: a tqdm bar in a terminal, one log line every N steps anywhere else.

A redrawn bar written to a file or a pipe is kilobytes of carriage returns per minute; when standard
error is not a terminal, :func:`progress` logs ``desc: step/total (pct) key=value ...`` through the
``dynprune.progress`` logger every ``DYNPRUNE_LOG_EVERY`` steps (default 100), at least every 30 seconds,
and at the last step (printed
to standard error when logging is not configured at all, e.g. in a notebook or a script).
``DYNPRUNE_PROGRESS=bar`` or ``=lines`` forces either form.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator

__all__ = ["progress"]

log = logging.getLogger(__name__)
MAX_SILENCE_S = 30.0  # seconds without a progress line, at most, off a terminal


def _env_every() -> int:
    raw = os.environ.get("DYNPRUNE_LOG_EVERY", "100")
    try:
        every = int(raw)
    except ValueError:
        raise ValueError(f"DYNPRUNE_LOG_EVERY={raw!r}: expected a number of steps >= 1") from None
    if every < 1:
        raise ValueError(f"DYNPRUNE_LOG_EVERY={raw!r}: expected a number of steps >= 1")
    return every


class _Lines:
    """tqdm's subset that dynprune uses (iteration, ``set_postfix``, ``close``), as periodic log lines."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int, every: int):
        self.iterable, self.desc, self.total, self.n, self.every = iterable, desc, total, initial, every
        self.postfix: dict[str, str] = {}
        self.t0, self.start = time.perf_counter(), initial
        self.last = self.t0

    def set_postfix(self, **kw) -> None:
        self.postfix = {k: str(v) for k, v in kw.items()}

    def _line(self) -> None:
        done = self.n - self.start
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        total = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        if log.hasHandlers():
            log.info("%s: %d%s %.2f it/s %s", self.desc, self.n, total, rate, extra)
        else:  # logging not configured (a script, a notebook): still show progress
            print(f"{self.desc}: {self.n}{total} {rate:.2f} it/s {extra}", file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.perf_counter()
            if self.every and (self.n % self.every == 0 or self.n == self.total or now - self.last >= MAX_SILENCE_S):
                self.last = now
                self._line()

    def close(self) -> None:
        pass


def progress(iterable: Iterable, desc: str, total: int | None = None, initial: int = 0, mininterval: float = 2.0,
             every: int | None = None, quiet: bool = False):
    """``iterable`` wrapped with progress reporting (a tqdm bar, or log lines off a terminal; module doc).
    ``every``: a log line every this many items (default ``DYNPRUNE_LOG_EVERY``; 1 for per-image progress).
    ``quiet``: report nothing (the ranks but 0 of a distributed run).

    Raises:
        ValueError: ``DYNPRUNE_LOG_EVERY`` or ``DYNPRUNE_PROGRESS`` set to something invalid.
    """
    mode = os.environ.get("DYNPRUNE_PROGRESS", "auto")
    if mode not in ("auto", "bar", "lines"):
        raise ValueError(f"DYNPRUNE_PROGRESS={mode!r}: expected 'auto', 'bar' or 'lines'")
    if total is None and hasattr(iterable, "__len__"):
        total = initial + len(iterable)  # type: ignore[arg-type]
    if quiet:
        return _Lines(iterable, desc, total, initial, 0)
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, dynamic_ncols=True, mininterval=mininterval)
    return _Lines(iterable, desc, total, initial, every or _env_every())
