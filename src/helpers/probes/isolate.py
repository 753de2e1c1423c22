"""Probes run in a child process, so an operator that aborts the process or hangs becomes a row.

One worker process (a clean interpreter, no forked device state: forked by the report's fork
server, helpers.runner.forkserver, which imported torch and the model code and never touched a
device, when the kernel runs under one; else multiprocessing "spawn") selects the device, and
then runs task after task sent over a pipe:
`fn(ctx, *args)` with `fn` a module-level function (it pickles by reference). The parent waits
for each answer with a per-task timeout:

  answer          -> ok (the task's value) or error (the task raised; its message)
  the pipe closes -> crashed: the worker died (signal / exit code, last lines of its log)
  no answer       -> timeout: the worker is killed

After a crash or a timeout the next task starts a fresh worker, so the rest go on. The worker's
stdout and stderr go to a log file (the crash message quotes its tail), not into the notebook.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.errors import WorkerStartError
from helpers.runner import forkserver

POLL_S = 0.2



@dataclass
class Outcome:
    status: str  # "ok" | "error" | "crashed" | "timeout"
    value: Any = None
    message: str = ""
    seconds: float = 0.0


def _worker_main(conn: Any, request: str, log_path: str, threads: int) -> None:
    """Entry point of the child: redirect output, build the device context, serve tasks."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        from helpers.probes.execute import WorkerContext

        ctx = WorkerContext.create(request, threads)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ready", ctx.info()))
    _serve(conn, ctx)
    # exit at once: tearing down an interpreter that holds torch and a model takes seconds,
    # which the parent would wait for; Python's own output buffers are flushed to the log first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _forked_main(fd: int, authkey: str, request: str, log_path: str, threads: int) -> None:
    """Entry point of a worker forked by the fork server: the pipe's end is descriptor `fd`;
    `authkey` is the parent's (hex), which a spawned worker inherits: torch sends tensors
    through multiprocessing's resource sharer, which checks it. Its libraries are loaded
    already, so the thread limits the environment sets for a spawned worker are applied here
    (OpenMP through torch in WorkerContext.create)."""
    from multiprocessing.connection import Connection

    mp.current_process().authkey = bytes.fromhex(authkey)
    _one_blas_thread()
    _worker_main(Connection(fd), request, log_path, threads)


def _one_blas_thread() -> None:
    """numpy's BLAS on one thread (OPENBLAS_NUM_THREADS=1 for a spawned worker)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: BLAS keeps its default (small probe arrays barely use it)
        return
    threadpool_limits(1, user_api="blas")


def _serve(conn: Any, ctx: Any) -> None:
    """Run the tasks sent over `conn` until None or a closed pipe."""
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args = task
        try:
            conn.send(("ok", fn(ctx, *args)))
        except BaseException as exc:  # the task's own failure: report it, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class Worker:
    """A probe worker process on one device; restarted on demand after a crash or timeout.

    threads: torch's CPU thread count in the worker (0 = torch's default). One thread is the
    default: probe tensors are small, and on a busy host a multi-threaded CPU reference spends
    more time waiting for cores than computing. Numpy's BLAS (the float64 metrics) runs on
    one thread for the same reason.
    """

    def __init__(self, request: str, start_timeout_s: float = 300.0,
                 log_dir: str | Path | None = None, threads: int = 1) -> None:
        self.request = request
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="probes-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {}
        self.forked = False  # the last start: forked by the fork server (else spawned)
        self.starts = 0
        self.start_seconds: list[float] = []
        self._proc: Any = None
        self._conn: Any = None
        self._log: Path | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> dict[str, Any]:
        """Start a fresh worker and wait until its device is ready."""
        self.stop()
        self.starts += 1
        self._log = self.log_dir / f"worker-{self.starts}.log"
        t0 = time.perf_counter()
        args = (self.request, str(self._log), self.threads)
        self._proc, self._conn = _forked(args)
        self.forked = self._proc is not None
        if self._proc is None:
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True,
                                     name=f"probe-worker-{self.starts}")
            with _child_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(self.threads or "")):
                self._proc.start()
            child.close()
        kind, *payload = self._wait_start()
        if kind != "ready":
            self.kill()
            raise WorkerStartError(f"the probe worker could not use device {self.request!r}: "
                                   f"{payload[0]}\n{self.log_tail()}")
        self.start_seconds.append(time.perf_counter() - t0)
        self.info = payload[0]
        return self.info

    def _wait_start(self) -> tuple[Any, ...]:
        if not self._conn.poll(self.start_timeout_s):
            return ("error", f"no answer within {self.start_timeout_s:g} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            return ("error", f"the worker died while starting ({_exit_text(self._proc.exitcode)})")

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self._proc is None:
            return
        try:
            if self._proc.is_alive():
                self._conn.send(None)
                self._proc.join(5)
        except (OSError, BrokenPipeError):
            pass
        self.kill()

    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(10)
            self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- tasks --------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Outcome:
        """fn(ctx, *args) in the worker (started if needed) with a timeout."""
        if not self.alive:
            self.start()
        t0 = time.perf_counter()
        try:
            self._conn.send((fn, args))
        except (BrokenPipeError, ConnectionResetError):  # it died while idle: start afresh
            self.start()
            self._conn.send((fn, args))
        deadline = t0 + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.kill()
                return Outcome("timeout", message=f"no result within {timeout_s:g} s; the "
                               "worker was killed and restarted for the next probe",
                               seconds=time.perf_counter() - t0)
            if self._conn.poll(min(left, POLL_S)):
                return self._answer(t0)
            if not self._proc.is_alive() and not self._conn.poll(0):
                return self._died(t0)

    def _answer(self, t0: float) -> Outcome:
        try:
            kind, *payload = self._conn.recv()
        except (EOFError, OSError):
            return self._died(t0)
        seconds = time.perf_counter() - t0
        if kind == "ok":
            return Outcome("ok", payload[0], seconds=seconds)
        return Outcome("error", message=payload[0], value=payload[1], seconds=seconds)

    def _died(self, t0: float) -> Outcome:
        self._proc.join(10)
        text = _exit_text(self._proc.exitcode)
        tail = self.log_tail()
        self.kill()
        msg = f"the worker process died ({text})" + (f"; last output: {tail}" if tail else "")
        return Outcome("crashed", message=msg, seconds=time.perf_counter() - t0)

    def log_tail(self, lines: int = 6, chars: int = 600) -> str:
        if self._log is None or not self._log.is_file():
            return ""
        text = self._log.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(text)[-chars:]


def _forked(args: tuple[Any, ...]) -> tuple[forkserver.Forked | None, Any]:
    """(the worker, our end of its pipe), forked by the fork server named in the environment;
    (None, None) without one, or when it does not answer (the worker is then spawned; a late
    fork finds its pipe closed and exits)."""
    sock = os.environ.get(forkserver.SOCKET_ENV)
    if not sock:
        return None, None
    conn, child = mp.Pipe()
    try:
        with child:
            return forkserver.Forked(sock, f"{__name__}:_forked_main",
                                     (mp.current_process().authkey.hex(), *args),
                                     [child.fileno()]), conn
    except OSError:
        conn.close()
        return None, None


@contextmanager
def _child_env(**values: str) -> Iterator[None]:
    """Environment variables a spawned child inherits (set around its start only; an empty
    value leaves the variable as it is)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
