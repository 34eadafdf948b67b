"""Where the robustness matrix runs its independent tasks: here, local processes, or Ray.

An executor runs one function over a list of argument tuples and yields ``(index, outcome)``
as each task finishes. A task never raises through the executor: the function is wrapped so
that an exception becomes a :class:`TaskError` outcome (with its traceback), and a worker
that dies (killed, out of memory) makes a :class:`TaskError` for every task it took with
it. The caller decides what a failed task means; the matrix reports it as a crashed cell.

- ``inline``: in this process, one task after another (debugging; plugins registered at run
  time in this process are seen).
- ``local`` (the matrix's default): a pool of ``workers`` fresh Python processes on this
  machine. Each imports ownmark (and ``plugins``) afresh and gets ``cores / workers`` torch
  threads, at most as many as the calling process has (set ``OMP_NUM_THREADS`` to lower it).
- ``ray``: tasks on a Ray cluster (``address``: ``None`` starts a local Ray runtime,
  ``"auto"`` or ``ray://host:10001`` joins one). Every node must have ownmark installed and
  see the output folder at the same path (a shared file system), because tasks read the
  models and keys earlier tasks wrote there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from ownmark.errors import ConfigError
from ownmark.registry import import_plugins

#: The executors :func:`make_executor` knows.
EXECUTORS = ("inline", "local", "ray")


@dataclass(frozen=True)
class TaskError:
    """A task that failed: the exception's type and message, and where it happened."""

    kind: str
    message: str
    traceback: str

    def as_dict(self) -> dict[str, str]:
        return {"error": f"{self.kind}: {self.message}", "traceback": self.traceback}


def _guarded(
    fn: Callable[..., Any], args: tuple[Any, ...], plugins: tuple[str, ...]
) -> Any | TaskError:
    """Run ``fn(*args)`` after importing ``plugins``; an exception becomes a TaskError."""
    try:
        import_plugins(plugins)
        return fn(*args)
    except Exception as exc:  # reported per task, never raised through the executor
        return TaskError(type(exc).__name__, str(exc), traceback.format_exc())


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        # A worker whose run was killed must not go on training for nobody: ask the kernel
        # to end it with its parent (PR_SET_PDEATHSIG).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)


class Executor(ABC):
    """Runs tasks; use as a context manager so workers are released."""

    name: str

    def __init__(self, plugins: Sequence[str] = ()) -> None:
        self.plugins = tuple(plugins)

    @abstractmethod
    def run(
        self, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(task index, result or TaskError)`` as tasks finish (any order)."""

    def close(self) -> None:  # noqa: B027  (an optional hook: most executors hold nothing)
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Every task in this process, in order."""

    name = "inline"

    def run(
        self, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        for index, args in enumerate(tasks):
            yield index, _guarded(fn, args, self.plugins)


class ProcessExecutor(Executor):
    """A pool of ``workers`` spawned processes on this machine."""

    name = "local"

    def __init__(self, workers: int = 1, plugins: Sequence[str] = ()) -> None:
        super().__init__(plugins)
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import torch

            # Each worker gets its share of the cores, and no more threads than this process
            # has (OMP_NUM_THREADS=1 on a shared machine: oversubscribed torch threads spin).
            share = max(1, (os.cpu_count() or 1) // self.workers)
            threads = min(share, torch.get_num_threads())
            # spawn, not fork: a forked child of a process that already ran torch's thread
            # pools can deadlock.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(threads,),
            )
        return self._pool

    def run(
        self, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        pool = self._get_pool()
        pending: dict[Future[Any], int] = {
            pool.submit(_guarded, fn, args, self.plugins): i for i, args in enumerate(tasks)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    yield index, future.result()
                except Exception as exc:  # the worker died: BrokenProcessPool and kin
                    self._pool = None  # a broken pool takes no more tasks; start a new one
                    yield (
                        index,
                        TaskError(type(exc).__name__, f"the worker process died: {exc}", ""),
                    )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Tasks on a Ray cluster, ``cpus`` CPUs each (default 1)."""

    name = "ray"

    def __init__(
        self, address: str | None = None, cpus: float = 1.0, plugins: Sequence[str] = ()
    ) -> None:
        super().__init__(plugins)
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "--executor ray needs Ray; install it with pip install 'ownmark[ray]'"
            ) from exc
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._remote = ray.remote(num_cpus=cpus)(_guarded)

    def run(
        self, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        pending = {self._remote.remote(fn, args, self.plugins): i for i, args in enumerate(tasks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                yield index, ray.get(done[0])
            except Exception as exc:  # the worker or its node died
                yield index, TaskError(type(exc).__name__, f"the Ray task failed: {exc}", "")

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(
    name: str = "local",
    *,
    workers: int = 1,
    address: str | None = None,
    plugins: Sequence[str] = (),
) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`)."""
    if name == "inline":
        return InlineExecutor(plugins)
    if name == "local":
        return ProcessExecutor(workers, plugins)
    if name == "ray":
        return RayExecutor(address, plugins=plugins)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
