"""Run a benchmark in this process or split over worker processes, and build the summary.

Worker processes exist because one Python process driving grpc.aio tops out at a few
thousand calls per second, about what the server can do: on a 2-core machine the load
generator must not be the bottleneck it is trying to measure.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from bench.config import BenchConfig
from bench.load import Progress, make_endpoints, preload, run_load
from bench.stats import RunStats, merge_runs

#: How long worker processes may take to import grpc and connect before the run is abandoned.
WORKER_START_TIMEOUT_S = 60.0
_CONNECT_TIMEOUT_S = 5.0


#: Told "start" when the measured window opens and "end" when it closes (see `run`).
WindowHook = Callable[[str], None]


class BenchError(RuntimeError):
    """The run could not be carried out (a worker died, nothing could be set up)."""


class WindowTimer:
    """Calls `hook("start")` `cfg.warmup` s after `start()`, then `hook("end")` `cfg.duration` s later.

    On its own thread, so a busy event loop cannot delay it; `cancel()` stops calls not yet made.
    For someone sampling server-side counters over exactly the measured window.
    """

    def __init__(self, cfg: BenchConfig, hook: WindowHook | None) -> None:
        self.cfg = cfg
        self.hook = hook
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.hook is None:
            return
        t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._main, args=(t0,), name="bench-window", daemon=True)
        self._thread.start()

    def _main(self, t0: float) -> None:
        assert self.hook is not None
        for at, what in ((self.cfg.warmup, "start"), (self.cfg.warmup + self.cfg.duration, "end")):
            due = t0 + at
            # A run that ended normally cancels right at (or after) the end of its window;
            # that cancel can win the race against this thread's wake-up (a busy event loop
            # holds the GIL), so a call that is due by then is still made.
            if self._cancelled.wait(max(0.0, due - time.perf_counter())) and time.perf_counter() < due:
                return
            self.hook(what)

    def cancel(self) -> None:
        self._cancelled.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


class ProgressPrinter:
    """Prints one line a second: elapsed, phase, operations so far, current rate, errors."""

    def __init__(self, cfg: BenchConfig, out: TextIO) -> None:
        self.cfg = cfg
        self.out = out
        self.start = time.perf_counter()
        self._last_t = self.start
        self._last_ops = 0

    def due(self) -> bool:
        return time.perf_counter() - self._last_t >= 1.0

    def emit(self, completed: int, errors: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        rate = (completed - self._last_ops) / (now - self._last_t) if now > self._last_t else 0.0
        phase = "warmup" if elapsed < self.cfg.warmup else "measure"
        self.out.write(
            f"bench {elapsed:6.1f}s {phase:<7} ops={completed:<9} ops/s={rate:<8.0f} errors={errors}\n"
        )
        self.out.flush()
        self._last_t = now
        self._last_ops = completed


def build_summary(
    cfg: BenchConfig, stats: RunStats, seconds: float, preload_info: dict[str, Any] | None
) -> dict[str, Any]:
    """The machine-readable result printed by `--json`."""
    return {
        "config": cfg.describe(),
        "seconds": round(seconds, 3),
        "preload": preload_info,
        **stats.summary(seconds),
    }


async def _single(
    cfg: BenchConfig, out: TextIO | None, window: WindowHook | None = None
) -> tuple[RunStats, float, dict[str, Any] | None]:
    endpoints = make_endpoints(cfg)
    try:
        await endpoints.connect(min(_CONNECT_TIMEOUT_S, cfg.timeout))
        preload_info = await preload(cfg, endpoints) if cfg.preload else None
        progress = Progress()
        printer = ProgressPrinter(cfg, out) if out is not None else None

        async def report() -> None:
            assert printer is not None
            while True:
                await asyncio.sleep(1.0)
                printer.emit(progress.completed, progress.errors)

        reporter = asyncio.create_task(report()) if printer is not None else None
        timer = WindowTimer(cfg, window)
        timer.start()  # run_load takes its start time right after this
        try:
            stats, seconds = await run_load(cfg, 0, cfg.clients, endpoints, progress)
        finally:
            timer.cancel()
            if reporter is not None:
                reporter.cancel()
        return stats, seconds, preload_info
    finally:
        await endpoints.close()


def preload_only(cfg: BenchConfig) -> dict[str, Any]:
    """Write every key of `cfg` once (as `cfg.preload` does before a run), in this process."""
    return asyncio.run(_preload_only(cfg))


async def _preload_only(cfg: BenchConfig) -> dict[str, Any]:
    endpoints = make_endpoints(cfg)
    try:
        await endpoints.connect(min(_CONNECT_TIMEOUT_S, cfg.timeout))
        return await preload(cfg, endpoints)
    finally:
        await endpoints.close()


def _worker_main(cfg: BenchConfig, worker: int, messages: Any, go: Any) -> None:
    """Entry point of a worker process: connect, say ready, wait for go, run, send results."""
    try:
        asyncio.run(_worker_async(cfg, worker, messages, go))
    except BaseException:
        messages.put(("error", worker, traceback.format_exc()))
        raise SystemExit(1) from None


async def _worker_async(cfg: BenchConfig, worker: int, messages: Any, go: Any) -> None:
    endpoints = make_endpoints(cfg, offset=worker)
    try:
        await endpoints.connect(min(_CONNECT_TIMEOUT_S, cfg.timeout))
        messages.put(("ready", worker, None))
        await asyncio.to_thread(go.wait)
        progress = Progress()

        async def report() -> None:
            while True:
                await asyncio.sleep(0.25)
                messages.put(("progress", worker, (progress.completed, progress.errors)))

        reporter = asyncio.create_task(report())
        try:
            stats, seconds = await run_load(cfg, worker, cfg.clients_of_worker(worker), endpoints, progress)
        finally:
            reporter.cancel()
        messages.put(("result", worker, (stats, seconds)))
    finally:
        await endpoints.close()


def _multi(cfg: BenchConfig, out: TextIO | None, window: WindowHook | None = None) -> tuple[RunStats, float]:
    # spawn, not fork: grpc's C core does not survive a fork with live threads.
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker_main, args=(cfg, w, messages, go), name=f"bench-worker-{w}", daemon=True)
        for w in range(cfg.worker_count)
    ]
    for proc in workers:
        proc.start()
    timer = WindowTimer(cfg, window)
    try:
        return _collect(cfg, workers, messages, go, out, timer)
    finally:
        timer.cancel()
        for proc in workers:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _collect(
    cfg: BenchConfig, workers: list[Any], messages: Any, go: Any, out: TextIO | None, timer: WindowTimer
) -> tuple[RunStats, float]:
    ready: set[int] = set()
    counters: dict[int, tuple[int, int]] = {}
    results: dict[int, tuple[RunStats, float]] = {}
    printer: ProgressPrinter | None = None
    dead_since: dict[int, float] = {}
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while len(results) < len(workers):
        try:
            kind, worker, payload = messages.get(timeout=0.1)
        except queue.Empty:
            kind = ""
        if kind == "error":
            raise BenchError(f"worker {worker} failed:\n{payload}")
        if kind == "ready":
            ready.add(worker)
            if len(ready) == len(workers):
                go.set()
                # Workers start their clocks as they wake from `go`, a few ms after this.
                timer.start()
                printer = ProgressPrinter(cfg, out) if out is not None else None
        elif kind == "progress":
            counters[worker] = payload
        elif kind == "result":
            results[worker] = payload
        if printer is not None and printer.due():
            printer.emit(sum(c for c, _ in counters.values()), sum(e for _, e in counters.values()))
        if not go.is_set() and time.monotonic() > deadline:
            raise BenchError(f"only {len(ready)} of {len(workers)} workers started in time")
        for w, proc in enumerate(workers):
            if w in results or proc.is_alive():
                continue
            # Its last messages may still be in the pipe: give them a moment to arrive.
            if time.monotonic() - dead_since.setdefault(w, time.monotonic()) > 2.0:
                raise BenchError(f"worker {w} exited with code {proc.exitcode} before reporting")
    seconds = max(s for _, s in results.values())
    return merge_runs(stats for stats, _ in results.values()), seconds


def run(
    cfg: BenchConfig, progress_out: TextIO | None = sys.stderr, window: WindowHook | None = None
) -> dict[str, Any]:
    """Run the benchmark described by `cfg` and return its summary (see `build_summary`).

    `window`, if given, is called (from a helper thread) with "start" when the measured
    window opens, after preload and warmup, and with "end" when it closes; requests still
    in flight at "end" are finished and counted afterwards. It is not called for a run
    that fails before reaching that point.
    """
    if cfg.worker_count == 1:
        stats, seconds, preload_info = asyncio.run(_single(cfg, progress_out, window))
    else:
        # Preload here, before the workers exist, so every worker measures a full key space.
        preload_info = asyncio.run(_preload_only(cfg)) if cfg.preload else None
        stats, seconds = _multi(cfg, progress_out, window)
    return build_summary(cfg, stats, seconds, preload_info)
