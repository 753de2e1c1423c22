"""Jupyter kernels for the stage notebooks.

Every notebook runs in a kernel of its own, started for it and shut down after it (stages talk
only through files, never through kernel state); what this module saves is the wait for that
kernel. A kernel is started over the IPC transport (unix sockets in a private temporary folder:
no TCP ports, and no "Kernel is running over TCP without encryption" warning), with the
notebook's folder as its working directory, and warmed up with the heavy imports the stages
make. `KernelPool.prestart` does that for the next notebook in a background thread while the
current one runs; `KernelPool.take` hands that kernel over, or starts one on the spot. With a
fork server (helpers.runner.forkserver) each kernel is forked once the server made the imports
its notebook needs (the server imports them in the notebooks' order).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager
from jupyter_client.blocking import BlockingKernelClient
from jupyter_core.utils import ensure_event_loop

from helpers.runner import forkserver

KERNEL_NAME = "python3"  # the kernelspec `make setup` installs into the venv
# Imported in a prestarted kernel before its notebook runs, in this order. One that fails is
# skipped: the notebook then imports it itself and shows the error where it belongs.
# helpers.plots goes first: it points MPLCONFIGDIR at its own font cache before matplotlib loads.
WARMUP_MODULES: tuple[str, ...] = ("helpers.plots", "helpers.stages.kit", "transformers")
# A notebook that loads a model (it imports `target` from the kit) also gets the shared model
# machinery every load imports first: torch.distributed.tensor, dynamo, scipy.optimize, seconds
# of CPU paid here while the stage before still runs, not by the stage.
MODEL_MACHINERY: tuple[str, ...] = ("transformers.modeling_utils",)
STARTUP_TIMEOUT = 60.0  # seconds for a started kernel to answer
WARMUP_TIMEOUT = 300.0  # seconds for the warm-up imports; past that the notebook waits for them
TAKE_SERVER_WAIT = 5.0  # seconds take() waits for a fork server's socket before starting alone
_WARMUP_CODE = """\
def __helpers_warmup(names):
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
__helpers_warmup({names!r})
del __helpers_warmup
"""


class StageKernelManager(KernelManager):
    """A KernelManager whose clients are asyncio ones (what nbclient expects, so it notices a
    kernel that dies mid-cell) and are remembered: papermill leaves open the client of a kernel
    it did not start, and `shutdown` closes them."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("client_class", "jupyter_client.asynchronous.AsyncKernelClient")
        super().__init__(**kwargs)
        self.clients: list[Any] = []
        self.cwd: Path | None = None
        self.start_seconds: float | None = None  # start until the kernel answered
        self.warmup_seconds: float | None = None  # the warm-up imports; None when not warmed
        self.shutdown_thread: threading.Thread | None = None  # shutdown(wait=False)
        self.fork_socket: Path | None = None  # launch through this fork server (forkserver)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        if self.fork_socket is not None and self.fork_socket.exists():
            return forkserver.launcher_cmd(self.fork_socket, cmd)
        return cmd

    def client(self, **kwargs: Any) -> Any:
        kc = super().client(**kwargs)
        self.clients.append(kc)
        return kc


def _imports(notebook: Path) -> tuple[list[str], bool] | None:
    """The modules the notebook's code cells import, and whether it loads a model (it imports
    `target` from the kit); None for a notebook that cannot be read or parsed."""
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
        trees = [ast.parse("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    except Exception:  # the notebook's own run reports what is wrong with it
        return None
    found: list[str] = []
    loads = False
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [node.module, *(f"{node.module}.{a.name}" for a in node.names
                                     if _is_helpers_module(f"{node.module}.{a.name}"))]
            loads |= node.module == "helpers.stages.kit" and any(a.name == "target"
                                                                   for a in node.names)
    return found, loads


def warmup_for(notebook: Path) -> tuple[str, ...]:
    """WARMUP_MODULES, then the modules the notebook's code cells import, then MODEL_MACHINERY
    when it loads a model; an unreadable notebook gets WARMUP_MODULES."""
    seen = _imports(notebook)
    if seen is None:
        return WARMUP_MODULES
    found, loads = seen
    return tuple(dict.fromkeys([*WARMUP_MODULES, *found, *(MODEL_MACHINERY if loads else ())]))


def preload_for(notebooks: Sequence[Path]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a fork server imports for these notebooks' kernels, as (early, rest): early is what
    the first notebook's kernel needs (its own imports, the kernel's, helpers.plots first for
    its font cache), made before the server forks; rest is every notebook's warm-up modules
    (warmup_for: the model machinery only where a notebook loads a model)."""
    first = _imports(notebooks[0]) if notebooks else None
    early = tuple(dict.fromkeys([WARMUP_MODULES[0], "ipykernel.kernelapp",
                                 *(first[0] if first else ())]))
    found = [m for nb in notebooks for m in warmup_for(nb)]
    rest = tuple(m for m in dict.fromkeys(found) if m not in early)
    return early, rest


def _python_flags() -> list[str]:
    """The interpreter flags of the kernel spec (those before `-m`), for the fork server."""
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
        return argv[1:argv.index("-m")]
    except Exception:
        return []


def _is_helpers_module(name: str) -> bool:
    """Whether `name` is a module of this package (`from helpers.stages import tasks`), found
    by its file: the runner imports no stage module."""
    import helpers

    head, *parts = name.split(".")
    path = Path(helpers.__file__).parent.joinpath(*parts)
    return head == "helpers" and (path.with_suffix(".py").is_file()
                                  or (path / "__init__.py").is_file())


def start_kernel(cwd: Path, ipc_prefix: Path, warmup: Sequence[str] | None = None,
                 fork_socket: Path | None = None) -> StageKernelManager:
    """Start a kernel in `cwd` over IPC (sockets `<ipc_prefix>-N`, connection file
    `<ipc_prefix>.json`), wait until it answers, then import `warmup` (default
    WARMUP_MODULES; empty: none) in it. With `fork_socket` (a ready fork server's), the kernel
    is forked by that server, its imports already made."""
    warmup = WARMUP_MODULES if warmup is None else warmup
    km = StageKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(ipc_prefix),
                            connection_file=f"{ipc_prefix}.json")
    km.cwd = Path(cwd).resolve()
    km.fork_socket = fork_socket
    t0 = time.perf_counter()
    try:
        env = dict(os.environ)
        if fork_socket is not None:  # where the kernel asks for processes of its own
            env[forkserver.SOCKET_ENV] = str(fork_socket)
        km.start_kernel(cwd=str(km.cwd), env=env)
        # parent=km: "alive" is the kernel's process (its launcher, while the fork server
        # finishes an import before it forks), not a heartbeat answered within 1 s
        kc = BlockingKernelClient(parent=km, **km.get_connection_info(session=True))
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
            km.start_seconds = round(time.perf_counter() - t0, 3)
            if warmup:
                _warm_up(km, kc, warmup)
        finally:
            kc.stop_channels()
    except BaseException:
        shutdown(km, now=True)
        raise
    return km


def _warm_up(km: StageKernelManager, kc: BlockingKernelClient, modules: Sequence[str]) -> None:
    """Import `modules` in the kernel, quietly; never raises (a stage imports what it needs)."""
    t0 = time.perf_counter()
    try:
        kc.execute_interactive(_WARMUP_CODE.format(names=tuple(modules)), silent=True,
                               store_history=False, allow_stdin=False,
                               timeout=WARMUP_TIMEOUT, output_hook=lambda msg: None)
    except Exception:  # timed out, kernel died: the notebook finds out for itself
        return
    km.warmup_seconds = round(time.perf_counter() - t0, 3)


def shutdown(km: KernelManager | None, now: bool = False, wait: bool = True) -> None:
    """Close the kernel's clients, stop its process and remove its files; safe to call twice,
    and on a kernel that never started. A graceful shutdown waits about a second for the
    kernel to exit: with `wait=False` that happens in a background thread (a later shutdown of
    the same kernel, KernelPool.close for one it handed out, waits for it)."""
    if km is None:
        return
    pending = getattr(km, "shutdown_thread", None)
    if pending is not None and pending is not threading.current_thread():
        pending.join()
    # the clients here, in the thread that used them (nbclient's asyncio sockets)
    for kc in getattr(km, "clients", ()):
        try:
            kc.stop_channels()
        except Exception:
            pass
    if not wait and km.has_kernel and isinstance(km, StageKernelManager):
        km.shutdown_thread = threading.Thread(target=_shutdown_in_thread, args=(km, now),
                                              name="kernel-shutdown", daemon=True)
        km.shutdown_thread.start()
        return
    try:
        if km.has_kernel:
            km.shutdown_kernel(now=now)
    except Exception:
        try:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        except Exception:
            pass
    finally:
        try:
            km.cleanup_resources()
        except Exception:
            pass


def _shutdown_in_thread(km: StageKernelManager, now: bool) -> None:
    try:
        shutdown(km, now=now)
    finally:
        _close_thread_loop()


def _close_thread_loop() -> None:
    """Close the event loop jupyter_client made for this (non-main) thread."""
    try:
        ensure_event_loop().close()
    except Exception:
        pass


class _Pending:
    """A kernel being started (and warmed up) in a background thread."""

    def __init__(self, cwd: Path, server: forkserver.Server | None = None,
                 early: bool = False) -> None:
        self.cwd = cwd
        self.server = server
        self.early = early  # forked once the server made its early imports, not the warm-up's
        self.dropped = threading.Event()  # set: start none (replaced, or the pool closes)
        self.km: StageKernelManager | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"kernel-prestart {cwd}",
                                       daemon=True)
        self._prefix: Path | None = None
        self._warmup: Sequence[str] = ()

    def start(self, prefix: Path, warmup: Sequence[str]) -> None:
        self._prefix, self._warmup = prefix, warmup
        self.thread.start()

    def _run(self) -> None:
        assert self._prefix is not None
        try:
            needs = () if self.early else self._warmup
            sock = (self.server.wait_ready(needs=needs, stop=self.dropped)
                    if self.server is not None else None)
            if self.dropped.is_set():
                return
            self.km = start_kernel(self.cwd, self._prefix, self._warmup, sock)
        except BaseException as exc:  # take() starts one on the spot and reports its error
            self.error = exc
        finally:
            _close_thread_loop()


class KernelPool:
    """Fresh kernels for a sequence of notebooks, each started ahead of time.

    `prestart(cwd)` starts the next notebook's kernel (and its warm-up) in a background thread;
    `take(cwd)` returns it once ready, or starts one now (without warm-up) when none was
    prestarted for `cwd` or it died: forked by the pool's fork server, or by the one this
    process keeps when it is current (forkserver.kept_if_current), else on its own. A kernel taken is the caller's to shut down (`shutdown`)
    once its notebook finished; `close()` shuts down the one prestarted and never taken, and
    any taken one still running. Use it as a context manager so that no kernel outlives the
    run, KeyboardInterrupt included.
    """

    def __init__(self, warmup: Sequence[str] | None = None, preload: Sequence[str] = (),
                 early: Sequence[str] = (), keep_server: bool = False) -> None:
        self.warmup = tuple(WARMUP_MODULES if warmup is None else warmup)
        self._dir = Path(tempfile.mkdtemp(prefix="stage-kernels-",  # mode 0700
                                          dir=forkserver.socket_base()))
        self._count = 0
        self._pending: _Pending | None = None
        self._taken: list[StageKernelManager] = []
        self._closed = False
        # with `preload` (and `early`): prestarted kernels are forked by a server that made
        # these imports (prestart(early=True): the early ones): the process's kept one
        # (forkserver.kept, left running when the pool closes) with `keep_server`, else one
        # started here for this pool alone
        self._own_server = not keep_server
        self.server = (None if not (preload or early)
                       else forkserver.kept(preload, _python_flags(), early) if keep_server
                       else forkserver.Server(self._dir / "fork", preload, _python_flags(), early))

    def _prefix(self) -> Path:
        self._count += 1
        return self._dir / f"k{self._count}"

    def prestart(self, cwd: Path, warmup: Sequence[str] | None = None,
                 early: bool = False) -> None:
        """Start a kernel for a notebook in `cwd` in the background (replacing one not taken),
        warmed up with `warmup` (default: the pool's). With a server, it is forked once the
        server made those of them it makes (`early`: its early ones, for the first notebook)."""
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        self._drop_pending()
        self._pending = _Pending(Path(cwd).resolve(), self.server, early)
        self._pending.start(self._prefix(), self.warmup if warmup is None else tuple(warmup))

    def take(self, cwd: Path) -> StageKernelManager:
        """A started kernel whose working directory is `cwd`, for one notebook."""
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        cwd = Path(cwd).resolve()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.thread.join()
            km = pending.km
            if km is not None and pending.cwd == cwd and km.is_alive():
                self._taken.append(km)
                return km
            shutdown(km, now=True)
        # none prestarted for cwd: forked by the pool's server, else by the one this process
        # keeps (current), else started on its own
        server = self.server or forkserver.kept_if_current(_python_flags())
        sock = server.wait_ready(timeout=TAKE_SERVER_WAIT) if server is not None else None
        try:
            km = start_kernel(cwd, self._prefix(), warmup=(), fork_socket=sock)
        except Exception:  # the server died meanwhile: the notebook still gets its kernel
            if sock is None:
                raise
            km = start_kernel(cwd, self._prefix(), warmup=())
        self._taken.append(km)
        return km

    def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.dropped.set()
            pending.thread.join()
            shutdown(pending.km, now=True)

    def close(self) -> None:
        """Shut down the kernel prestarted and not taken; remove the sockets' folder."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending is not None:
                self._pending.dropped.set()  # no kernel is started from here on
            if self.server is not None and self._own_server and not self._taken:
                # closed before the first notebook ran (bad input, an interrupt): a kernel
                # still waiting for the server's imports gets no answer
                self.server.close()
            self._drop_pending()
        finally:
            for km in self._taken:  # normally shut down already by whoever took it
                shutdown(km, now=True)  # waits for a shutdown under way
            self._taken.clear()
            if self.server is not None and self._own_server:
                self.server.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
