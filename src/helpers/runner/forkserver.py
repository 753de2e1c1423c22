"""A fork server for the stage kernels: the stages' imports made once per report, not once per
stage.

Every stage notebook runs in a fresh kernel (stages share nothing but files), and every kernel
used to import torch, transformers' model machinery and the helpers itself: about 4.4 s of CPU
each on a 2-core host, paid while the stage before it runs. The server is one process that
makes those imports, then forks a kernel for each notebook on request: the child is a new
process with its own state (what a notebook does never reaches another), started with the
imports already in memory.

    python -m helpers.runner.forkserver SOCKET EARLY... -- MODULE...

It listens on the unix socket SOCKET at once, imports the EARLY modules (what the first
notebook needs), then the other MODULEs (one that fails is skipped), naming each one made in
`SOCKET.imported`. For each request of helpers.runner.fork_launch (the kernel's
arguments, working directory, environment and standard streams) it forks a kernel and answers
its pid: once the early imports are made, between two imports while it still makes the
others. The first notebook's kernel starts while the server imports what later notebooks
need. A kernel it forked finds the socket in
$HELPERS_FORK_SERVER and asks, through `Forked`, for a process of its own the same way: the
operator-probe worker, which then starts with torch and the model code imported, and no device
touched, as a spawned one would. When a process ends the server sends its exit status; when
the requester's connection drops (the launcher was killed) it kills the process. It
forks from its only thread, and has made no parallel torch call (no OpenMP pool exists yet).
It exits when its parent (the runner) is gone; its kernels then see themselves orphaned and
exit too. The pipeline's server is kept for the process's later runs (`kept`): the imports are
made once per process; a run that needs a module the server did not import asks it to import
that too (a request answered at once, the import made between forks), and a server is replaced
only when what it was started from changed.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from helpers.runner import fork_launch
from helpers.runner.fork_launch import recv_exact

LAUNCHER = Path(__file__).with_name("fork_launch.py")
SOCKET_ENV = "HELPERS_FORK_SERVER"  # set in the kernels the server forks: its socket
POLL_S = 0.5  # how often the server looks for ended kernels and for its parent
READY_TIMEOUT = 120.0  # seconds a kernel start waits for the server's imports


class Server:
    """A fork server run by the report (helpers.runner.kernels.KernelPool) for its kernels:
    `early` imported before it listens, `modules` after."""

    def __init__(self, sock: Path, modules: Sequence[str], python_flags: Sequence[str],
                 early: Sequence[str] = ()) -> None:
        self.sock = sock
        self.modules = {*early, *modules}
        self.process = subprocess.Popen(
            [sys.executable, *python_flags, "-m", "helpers.runner.forkserver", str(sock),
             *early, "--", *modules], stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT, needs: Sequence[str] = (),
                   stop: threading.Event | None = None) -> Path | None:
        """The socket once the server listens and has imported the modules of `needs` that
        it imports (it forks nothing before its early imports); None when it died, is late
        (the kernel then starts on its own) or `stop` is set."""
        wanted = set(needs) & self.modules
        done = imported(self.sock)
        end = time.monotonic() + timeout
        stop = stop or threading.Event()
        while time.monotonic() < end and self.process.poll() is None:
            if self.sock.exists() and (not wanted or wanted <= _lines(done)):
                return self.sock
            if stop.wait(0.05):
                return None
        return None

    def grow(self, modules: Sequence[str]) -> bool:
        """Ask the running server to import `modules` too; False when it cannot be reached.

        It answers at once and imports them one by one between the forks it makes, naming
        each in its imported file when made, so wait_ready(needs=...) waits for them."""
        try:
            conn, _ = fork_launch.request(str(self.sock), {"import": list(modules)}, [])
        except OSError:  # fork_launch.Unanswered is a ConnectionError
            return False
        conn.close()
        self.modules |= set(modules)
        return True

    def close(self) -> None:
        """Stop the server (its kernels, orphaned, exit on their own)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The fork server this process keeps between its runs (kept): runs made one after another in
# one process (tests, a notebook calling the pipeline) fork from the imports an earlier run's
# server made, instead of making them again (about 2-4 s of CPU each). A command-line report is
# one run in one process, for which this changes nothing.
_kept: tuple[Server, tuple[Any, ...], Path] | None = None
_kept_lock = threading.Lock()


def kept(modules: Sequence[str], python_flags: Sequence[str],
         early: Sequence[str] = ()) -> Server:
    """A fork server of this process that makes (or made) `early` then `modules`, kept running
    for later runs of this process (closed when it ends).

    The one kept is used again when it runs and was started from what a new one would be
    (the interpreter and its flags, PYTHONPATH, the helpers package's source files unchanged);
    a module asked for that it did not import (the standard library's aside: a kernel imports
    those itself in no time) it is asked to import too (Server.grow). Otherwise a new one
    replaces it, making what both were asked for. A kernel it forks takes its run's own working
    directory and environment; what a module reads from the environment while it is imported
    is as it was when the server imported it."""
    global _kept
    origin = _origin(python_flags)
    wanted = {*early, *modules}
    with _kept_lock:
        if _kept is not None:
            server, was, folder = _kept
            missing = {m for m in wanted - server.modules
                       if m.partition(".")[0] not in sys.stdlib_module_names}
            if server.process.poll() is None and was == origin and (
                    not missing or server.grow(sorted(missing))):
                return server
            if was == origin and server.process.poll() is None:  # grows: keep what it made
                modules = [*modules, *(m for m in server.modules - wanted)]
            _close_kept()
        folder = Path(tempfile.mkdtemp(prefix="fork-server-", dir=socket_base()))
        server = Server(folder / "fork", modules, python_flags, early)
        _kept = (server, origin, folder)
        return server


def running_kept() -> Server | None:
    """The server kept by this process (kept), None when there is none."""
    return _kept[0] if _kept is not None else None


def kept_if_current(python_flags: Sequence[str]) -> Server | None:
    """The server this process keeps when it runs and was started from what a new one would
    be (see kept), else None: a notebook run outside a report (a comparison) forks its kernel
    from it, and no server is started for that one notebook."""
    with _kept_lock:
        if _kept is None:
            return None
        server, was, _ = _kept
        alive = server.process.poll() is None
        return server if alive and was == _origin(python_flags) else None


def _close_kept() -> None:
    global _kept
    if _kept is not None:
        server, _, folder = _kept
        _kept = None
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_close_kept)


def _origin(python_flags: Sequence[str]) -> tuple[Any, ...]:
    """What a server's imports come from: the interpreter, its flags, PYTHONPATH, and the
    helpers package's source files (their count and latest change)."""
    import helpers

    stamps = [f.stat().st_mtime_ns for f in Path(helpers.__file__).parent.rglob("*.py")]
    return (sys.executable, tuple(python_flags), os.environ.get("PYTHONPATH", ""),
            len(stamps), max(stamps, default=0))


# Unix socket paths are limited to about 107 bytes: a socket folder's base path keeps within
# 50, leaving room for the folder's own name and the socket names in it.
SOCKET_BASE_MAX = 50


def socket_base() -> Path:
    """Where the folders of unix sockets go (the fork server's, the kernels' IPC ones): the
    temporary folder, or /tmp where its path is longer than SOCKET_BASE_MAX."""
    base = Path(tempfile.gettempdir())
    return Path("/tmp") if len(str(base)) > SOCKET_BASE_MAX else base


def imported(sock: Path) -> Path:
    """The file next to the server's socket that names each module once its import is made
    (or failed), one a line."""
    return sock.with_name(sock.name + ".imported")


def _lines(path: Path) -> set[str]:
    """The complete lines of a file being written; none when it does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    return set(text.splitlines()[:text.count("\n")])


def launcher_cmd(sock: Path, cmd: list[str]) -> list[str]:
    """The kernel command `cmd` launched through the server listening on `sock`."""
    return [sys.executable, "-I", str(LAUNCHER), str(sock), "--", *cmd]


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
    if len(head) < 8:
        head += recv_exact(conn, 8 - len(head))
    (size,) = struct.unpack("!Q", head)
    return json.loads(recv_exact(conn, size)), fds


def _become(request: dict[str, Any], fds: list[int], keep: list[socket.socket]) -> None:
    """In the forked child: run what was asked (a kernel, or a call) in the requester's working
    directory and environment (never returns)."""
    code = 1
    # what the server imported stays as it is for the child's life: out of the collector's
    # sight, every full collection the stage makes (one per freed model side) skips it
    gc.freeze()
    try:
        for s in keep:
            s.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
        cwd = request["cwd"]
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = cwd  # what `python -m ipykernel_launcher` run in cwd puts first
        if "call" in request:
            _call(request, fds)
        else:
            _kernel(request, fds)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _kernel(request: dict[str, Any], fds: list[int]) -> None:
    """Take the launcher's standard streams and run the kernel of its command line."""
    os.setsid()  # its own session, as jupyter_client starts a kernel
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    parent = request["env"].get("JPY_PARENT_PID", "0")
    sys.argv = ["ipykernel_launcher", *request["args"]]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=[*request["args"], f"--IPKernelApp.parent_handle={parent}"])


def _call(request: dict[str, Any], fds: list[int]) -> None:
    """`module:function` (request["call"]) called with the descriptors passed, then the
    request's arguments, on the requester's module path (as multiprocessing's spawn passes
    it): a probe worker (helpers.probes.isolate)."""
    sys.path[:] = request["path"]
    module, _, name = request["call"].partition(":")
    getattr(importlib.import_module(module), name)(*fds, *request["args"])


class Forked:
    """A process the fork server forked for this one (`module:function` called with `fds` and
    `args`; see _call), seen as multiprocessing.Process sees its child: is_alive, join, kill,
    exitcode (negative: the signal that ended it). The server sends the exit status on the
    request's connection, and kills the process when that connection drops."""

    def __init__(self, sock: str | Path, call: str, args: Sequence[Any], fds: list[int]) -> None:
        payload = {"call": call, "args": list(args), "path": sys.path}
        self._conn, self.pid = fork_launch.request(str(sock), payload, fds)
        self.exitcode: int | None = None
        self._ended = False

    def is_alive(self) -> bool:
        if not self._ended and select.select([self._conn], [], [], 0)[0]:
            self._status()
        return not self._ended

    def join(self, timeout: float | None = None) -> None:
        if not self._ended and select.select([self._conn], [], [], timeout)[0]:
            self._status()

    def kill(self) -> None:
        if not self._ended:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _status(self) -> None:
        try:
            (self.exitcode,) = struct.unpack("!q", recv_exact(self._conn, 8))
        except (ConnectionError, OSError):  # the server ended first: the status is unknown
            self.kill()
        self._ended = True
        self._conn.close()


def _import(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:  # the notebook imports it itself and shows the error there
        pass


class _Loop:
    """The listening socket and the kernels forked from it."""

    def __init__(self, path: str, done: TextIO) -> None:
        self.done = done  # the imported file: a module's name once its import is made
        self.pending: list[str] = []  # modules a requester asked for, imported between turns
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path + ".tmp")
        os.replace(path + ".tmp", path)  # the socket appears once it listens
        self.listener.listen(16)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.wake = os.pipe()  # an ended kernel (SIGCHLD) wakes the loop at once
        os.set_blocking(self.wake[1], False)
        signal.set_wakeup_fd(self.wake[1])
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wake[0], selectors.EVENT_READ, "wake")
        self.kernels: dict[int, socket.socket] = {}

    def imports(self, name: str) -> None:
        _import(name)
        self.done.write(name + "\n")

    def turn(self, timeout: float) -> None:
        """Fork the kernels asked for, reap those that ended, make one import asked for; wait
        at most `timeout` s (none while imports are pending)."""
        for key, _ in self.sel.select(0 if self.pending else timeout):
            if key.fileobj is self.listener:
                self.pending += _fork(self.listener, self.sel, self.kernels, self.wake)
            elif key.data == "wake":
                os.read(self.wake[0], 512)
            else:  # a launcher's connection ended: it was killed, so is its kernel
                pid = key.data
                self.sel.unregister(key.fileobj)
                if pid in self.kernels:
                    _kill(pid)
        _reap(self.sel, self.kernels)
        if self.pending:
            self.imports(self.pending.pop(0))


def serve(path: str, early: list[str], modules: list[str]) -> None:
    # tqdm.auto, imported by transformers after ipykernel, looks for ipywidgets and warns on
    # the console that it is missing; it then uses its console bar, as it does without ipykernel
    warnings.filterwarnings("ignore", message="IProgress not found")
    parent = os.getppid()
    with imported(Path(path)).open("w", encoding="utf-8", buffering=1) as done:
        loop = _Loop(path, done)  # listening at once: a request waits for the early imports
        for name in early:
            loop.imports(name)
        for name in modules:  # a kernel asked for meanwhile is forked between two imports
            loop.turn(0)
            loop.imports(name)
        while os.getppid() == parent:
            loop.turn(POLL_S)


def _fork(listener: socket.socket, sel: selectors.BaseSelector,
          kernels: dict[int, socket.socket], wake: tuple[int, int]) -> list[str]:
    """Fork the process a request asks for; a request to import more (Server.grow) is
    answered at once and its modules returned, to be imported between later turns."""
    conn, _ = listener.accept()
    try:
        request, fds = _read_request(conn)
    except (OSError, ValueError):
        conn.close()
        return []
    if "import" in request:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!q", 0))
        conn.close()
        return [str(name) for name in request["import"]]
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for fd in wake:
            os.close(fd)
        _become(request, fds, [listener, conn, *kernels.values()])
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(struct.pack("!q", pid))
    except OSError:
        _kill(pid)
    kernels[pid] = conn
    sel.register(conn, selectors.EVENT_READ, pid)
    return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(sel: selectors.BaseSelector, kernels: dict[int, socket.socket]) -> None:
    """Send each ended kernel's exit status to its launcher."""
    while kernels:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = kernels.pop(pid, None)
        if conn is None:
            continue
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(struct.pack("!q", os.waitstatus_to_exitcode(status)))
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    _path, *_names = sys.argv[1:]
    _cut = _names.index("--") if "--" in _names else -1  # no "--": nothing early
    serve(_path, _names[:max(_cut, 0)], _names[_cut + 1:])
