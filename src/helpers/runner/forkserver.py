"""A fork server for the stage kernels: the stages' imports made once per report, not once per
stage.

Every stage notebook runs in a fresh kernel (stages share nothing but files), and every kernel
used to import torch, transformers' model machinery and the helpers itself: about 4.4 s of CPU
each on a 2-core host, paid while the stage before it runs. The server is one process that
makes those imports, then forks a kernel for each notebook on request: the child is a new
process with its own state (what a notebook does never reaches another), started with the
imports already in memory.

    python -m helpers.runner.forkserver SOCKET MODULE...

It imports the modules (one that fails is skipped), listens on the unix socket SOCKET, and for
each request of helpers.runner.fork_launch (the kernel's arguments, working directory,
environment and standard streams) forks a kernel and answers its pid; when the kernel ends it
sends its exit status; when the launcher's connection drops (the launcher was killed) it kills
the kernel. It forks from its only thread, and has made no parallel torch call (no OpenMP pool
exists yet). It exits when its parent (the runner) is gone; its kernels then see themselves
orphaned and exit too.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.runner.fork_launch import recv_exact

LAUNCHER = Path(__file__).with_name("fork_launch.py")
POLL_S = 0.5  # how often the server looks for ended kernels and for its parent
READY_TIMEOUT = 120.0  # seconds a kernel start waits for the server's imports


class Server:
    """A fork server run by the report (helpers.runner.kernels.KernelPool) for its kernels."""

    def __init__(self, sock: Path, modules: Sequence[str], python_flags: Sequence[str]) -> None:
        self.sock = sock
        self.process = subprocess.Popen(
            [sys.executable, *python_flags, "-m", "helpers.runner.forkserver", str(sock),
             *modules], stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Path | None:
        """The socket once the server has made its imports; None when it died or is late
        (the kernel then starts on its own)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.process.poll() is None:
            if self.sock.exists():
                return self.sock
            time.sleep(0.05)
        return None

    def close(self) -> None:
        """Stop the server (its kernels, orphaned, exit on their own)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launcher_cmd(sock: Path, cmd: list[str]) -> list[str]:
    """The kernel command `cmd` launched through the server listening on `sock`."""
    return [sys.executable, "-I", str(LAUNCHER), str(sock), "--", *cmd]


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
    if len(head) < 8:
        head += recv_exact(conn, 8 - len(head))
    (size,) = struct.unpack("!Q", head)
    return json.loads(recv_exact(conn, size)), fds


def _become_kernel(request: dict[str, Any], fds: list[int], keep: list[socket.socket]) -> None:
    """In the forked child: take the launcher's streams, directory and environment, and run
    the kernel (never returns)."""
    code = 1
    try:
        for s in keep:
            s.close()
        os.setsid()  # its own session, as jupyter_client starts a kernel
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
        cwd = request["cwd"]
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = cwd  # what `python -m ipykernel_launcher` run in cwd puts first
        parent = request["env"].get("JPY_PARENT_PID", "0")
        sys.argv = ["ipykernel_launcher", *request["args"]]
        from ipykernel import kernelapp

        kernelapp.launch_new_instance(argv=[*request["args"],
                                            f"--IPKernelApp.parent_handle={parent}"])
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


def serve(path: str, modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the notebook imports it itself and shows the error there
            pass
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.replace(path + ".tmp", path)  # the socket appears once it is ready
    listener.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    wake_r, wake_w = os.pipe()  # an ended kernel (SIGCHLD) wakes the loop at once
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    kernels: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        for key, _ in sel.select(POLL_S):
            if key.fileobj is listener:
                _fork(listener, sel, kernels, (wake_r, wake_w))
            elif key.data == "wake":
                os.read(wake_r, 512)
            else:  # a launcher's connection ended: it was killed, so is its kernel
                pid = key.data
                sel.unregister(key.fileobj)
                if pid in kernels:
                    _kill(pid)
        _reap(sel, kernels)


def _fork(listener: socket.socket, sel: selectors.BaseSelector,
          kernels: dict[int, socket.socket], wake: tuple[int, int]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _read_request(conn)
    except (OSError, ValueError):
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for fd in wake:
            os.close(fd)
        _become_kernel(request, fds, [listener, conn, *kernels.values()])
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(struct.pack("!q", pid))
    except OSError:
        _kill(pid)
    kernels[pid] = conn
    sel.register(conn, selectors.EVENT_READ, pid)


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
    serve(sys.argv[1], sys.argv[2:])
