"""The command a stage kernel is launched with when a fork server runs (helpers.runner.forkserver).

    python -I fork_launch.py SOCKET -- python ... -m ipykernel_launcher -f CONNECTION_FILE

It stands where the kernel process would: it hands the kernel's command line, working
directory, environment and standard streams to the fork server, which forks a kernel with the
stages' imports already made; it then forwards every signal jupyter_client sends (interrupt,
terminate) to that kernel and exits with the kernel's exit status. If it is killed, the server
kills the kernel. Where no server answers, or the command is not an ipykernel one, it becomes
the plain kernel command (exec), so a kernel always starts. The standard library and
helpers.errors (which imports nothing) only, run with -I: it must start in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from helpers.errors import ReportError

CONNECT_TIMEOUT = 10.0  # seconds to reach the server's socket (a live server accepts at once)
# seconds for its answer (the pid): it forks between two of its imports, and one import
# (transformers' model machinery) can take tens of seconds on a busy host
ANSWER_TIMEOUT = 120.0
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def _kernel_args(cmd: list[str]) -> list[str]:
    """The arguments after `-m ipykernel_launcher` (ValueError for any other command)."""
    i = cmd.index("ipykernel_launcher")
    if i == 0 or cmd[i - 1] != "-m":
        raise ValueError("not an ipykernel command")
    return cmd[i + 1:]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes from the socket (ConnectionError when it closes first)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the connection closed")
        data += chunk
    return data


class Unanswered(ReportError, ConnectionError):
    """The server took a request and gave no pid: it may still fork that process, so the
    requester must not start the same one another way."""


def request(path: str, payload: dict[str, object], fds: list[int]) -> tuple[socket.socket, int]:
    """Ask the server at `path` for a process: `payload` says what it runs (this process's
    working directory and environment are added), `fds` are the descriptors it gets. Returns
    the open connection (the process's exit status arrives on it) and the process's pid.
    OSError when the server cannot be reached; Unanswered when it was and gave no pid."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.settimeout(ANSWER_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    try:
        data = json.dumps({**payload, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(sock, [struct.pack("!Q", len(data))], fds)
        sock.sendall(data)
        (pid,) = struct.unpack("!q", recv_exact(sock, 8))
    except OSError as exc:
        sock.close()
        raise Unanswered(f"the fork server at {path} did not answer: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock, pid


def main(argv: list[str]) -> None:
    path, cmd = argv[1], argv[argv.index("--") + 1:]
    try:
        sock, pid = request(path, {"args": _kernel_args(cmd)}, [0, 1, 2])
    except Unanswered as exc:  # it may still fork this kernel: none is started here
        sys.exit(f"fork_launch: {exc}")
    except (OSError, ValueError):
        os.execv(cmd[0], cmd)  # no server, or not a kernel it can fork: the plain command
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it has just ended: its status follows
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        (code,) = struct.unpack("!q", recv_exact(sock, 8))
    except ConnectionError:
        code = 1
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv)
