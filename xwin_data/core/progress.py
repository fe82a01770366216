"""Progress bars with rows/s and ETA, shared by every long stage."""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, with the task's unit (rows, calls, samples)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rows")
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {unit}/s" if speed >= 10 else f"{speed:.2f} {unit}/s", style="progress.data.speed")


def make_progress(disable: bool = False) -> "Progress | LineProgress":
    """Bars on a terminal; where stderr is not a terminal (a log, CI, a pipe), a progress line per running task
    at least every `XWIN_DATA_PROGRESS_EVERY` seconds (default 10) and when it finishes."""
    if not disable and not sys.stderr.isatty():
        return LineProgress(float(os.environ.get("XWIN_DATA_PROGRESS_EVERY", "10")))
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        disable=disable, transient=False,
    )


def _seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class _LineTask:
    description: str
    total: float | None
    unit: str
    started: float = field(default_factory=time.monotonic)
    completed: float = 0.0
    finished: bool = False


class LineProgress:
    """The `Progress` calls the engine and ops make (add_task, advance, update), written as plain lines: done /
    total, rate, elapsed and ETA. A timer thread prints every running task each `every` seconds, so a log shows
    that a long model stage is alive even between its updates."""

    def __init__(self, every: float = 10.0):
        self.every = max(0.1, every)
        self._tasks: dict[int, _LineTask] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LineProgress":
        self._thread = threading.Thread(target=self._tick, name="xwin-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def add_task(self, description: str, total: float | None = None, unit: str = "rows", **_) -> int:
        with self._lock:
            task_id = len(self._tasks)
            self._tasks[task_id] = _LineTask(description, total, unit)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self._tasks[task_id].completed + advance)

    def update(self, task_id: int, completed: float | None = None, total: float | None = None, **_) -> None:
        with self._lock:
            t = self._tasks[task_id]
            if total is not None:
                t.total = total
            if completed is not None:
                t.completed = completed
            done = t.total is not None and t.completed >= t.total and not t.finished
            if done:
                t.finished = True
        if done:
            self._print(t)

    def line(self, t: _LineTask) -> str:
        elapsed = time.monotonic() - t.started
        rate = t.completed / elapsed if elapsed > 0 else 0.0
        total = f"/{t.total:,.0f}" if t.total is not None else ""
        text = f"{t.description}: {t.completed:,.0f}{total} {t.unit}, {rate:,.2f} {t.unit}/s, " \
               f"elapsed {_seconds(elapsed)}"
        if t.finished:
            return text + ", done"
        if t.total is not None and rate > 0:
            return text + f", ETA {_seconds((t.total - t.completed) / rate)}"
        return text + ", ETA unknown"

    def _print(self, t: _LineTask) -> None:
        console.print(f"[{time.strftime('%H:%M:%S')}] {self.line(t)}", markup=False, highlight=False, soft_wrap=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                running = [t for t in self._tasks.values() if not t.finished]
            for t in running:
                self._print(t)


class ProgressHandle:
    """What an op holds: advance it as work completes."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress, self._task = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, completed: float | None = None, total: float | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, total=total)


@contextmanager
def track(progress: "Progress | LineProgress | None", description: str, total: float | None, unit: str = "rows") -> Iterator[ProgressHandle]:
    if progress is None:
        yield ProgressHandle(None, None)
        return
    task = progress.add_task(description, total=total, unit=unit)
    yield ProgressHandle(progress, task)
