"""The stage kernels (helpers.runner.kernels) with real kernels: each notebook gets a fresh one,
the next one is prestarted and warmed up, none is left behind, no TCP warning, no tqdm bar."""

import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.blocking import BlockingKernelClient

from helpers.config import RunConfig
from helpers.records import read_result
from helpers.runner import forkserver, kernels, pipeline
from helpers.runner.pipeline import run_pipeline

FIXTURES = Path(__file__).parent / "fixtures"
TCP_WARNING = "without encryption"


def _kernel_children() -> list[psutil.Process]:
    """Kernels (and their launchers) still running under this process; the fork server the
    process keeps between runs (forkserver.kept) is no kernel."""
    found = []
    server = forkserver.running_kept()
    for p in psutil.Process().children(recursive=True):
        if server is not None and p.pid == server.process.pid:
            continue
        try:
            if any("ipykernel" in part for part in p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _recorder(name: str, out: str) -> nbformat.NotebookNode:
    """A notebook that records its kernel's pid, cwd and which warm-up modules were loaded
    before its first cell, into `out` (a path relative to run_dir)."""
    source = f"""\
import json, os, sys
from pathlib import Path
warm = [m for m in {kernels.WARMUP_MODULES!r} if m in sys.modules]
record = {{"stage": {name!r}, "status": "passed", "seconds": 0.0, "title": {name!r},
          "metrics": {{"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                      "warm": warm}}}}
Path(run_dir, {out!r}).write_text(json.dumps(record))
"""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('run_dir = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(source)]
    return nb


def _run(km: kernels.KernelManager, code: str) -> str:
    """What `code` prints in the kernel."""
    kc = BlockingKernelClient(**km.get_connection_info(session=True))
    kc.start_channels()
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    try:
        kc.wait_for_ready(timeout=30)
        kc.execute_interactive(code, timeout=30, output_hook=hook)
    finally:
        kc.stop_channels()
    return "".join(out).strip()


def test_pipeline_prestarts_a_fresh_kernel_per_notebook_and_leaves_none(tmp_path, capfd):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nbformat.write(_recorder("first", "results/first.json"), nbs / "01_first.ipynb")
    shutil.copy(FIXTURES / "02_broken.ipynb", nbs)  # raises in its second code cell
    nbformat.write(_recorder("second", "results/second.json"), nbs / "03_second.ipynb")
    nbformat.write(_recorder("summary", "summary.json"), nbs / "summary.ipynb")

    out = run_pipeline(RunConfig.from_params(out=str(tmp_path / "out")), notebooks_dir=nbs,
                       figures_dir=None, pdf=False)

    assert _kernel_children() == []  # every kernel was shut down, the prestarted ones too
    results = out.results
    assert results["first"].status == "passed" and results["second"].status == "passed"
    broken = read_result(out.run_dir / "results" / "broken.json")
    assert broken.status == "error" and broken.error["type"] == "RuntimeError"
    assert "planted failure" in broken.error["message"] and broken.error["cell"] is not None
    assert out.exit_code == 2  # a stage raised

    first, second = results["first"].metrics, results["second"].metrics
    summary = json.loads((out.run_dir / "summary.json").read_text())["metrics"]
    pids = [first["pid"], second["pid"], summary["pid"]]
    assert len(set(pids)) == 3 and psutil.Process().pid not in pids  # one kernel each
    assert not any(psutil.pid_exists(p) and "ipykernel" in " ".join(psutil.Process(p).cmdline())
                   for p in pids)
    assert {first["cwd"], second["cwd"], summary["cwd"]} == {str(nbs.resolve())}
    # the first kernel is forked by the server once it made the early imports (helpers.plots
    # first); the others once it made them all, then warmed up while the previous notebook ran
    assert first["warm"][:1] == ["helpers.plots"]
    assert second["warm"] == summary["warm"] == list(kernels.WARMUP_MODULES)

    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert TCP_WARNING not in console
    assert "Executing" not in console and "cell/s" not in console  # no nbclient tqdm bar
    assert "\r" not in captured.out  # not a terminal: start and end lines only
    assert "[3/3] second ..." in captured.out
    assert "[2/3] broken: error in" in captured.out and "with kernel start" in captured.out


def test_runs_in_one_process_fork_their_kernels_from_the_server_it_keeps(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nbformat.write(_recorder("first", "results/first.json"), nbs / "01_first.ipynb")

    def parent_of_the_kernel(out: str) -> int:
        run = run_pipeline(RunConfig.from_params(out=str(tmp_path / out)), notebooks_dir=nbs,
                           figures_dir=None, pdf=False)
        assert run.results["first"].status == "passed"
        return run.results["first"].metrics["ppid"]

    first = parent_of_the_kernel("a")
    server = forkserver.running_kept()
    assert server is not None and first == server.process.pid
    assert parent_of_the_kernel("b") == first  # the imports made once, forked from again
    assert _kernel_children() == [] and server.process.poll() is None
    # the helpers' sources changed (or PYTHONPATH, the flags): a new server replaces it
    monkeypatch.setattr(forkserver, "_origin", lambda flags: ("changed",))
    third = parent_of_the_kernel("c")
    assert third != first and third == forkserver.running_kept().process.pid
    assert server.process.wait(timeout=10) is not None  # the old one was stopped


def _exit_with_whether_imported(name: str) -> None:
    """Run in a process the fork server forked: exit 0 when `name` was imported there, 3 if not."""
    os._exit(0 if name in sys.modules else 3)


def test_a_kept_server_asked_for_modules_it_lacks_imports_them_instead_of_being_replaced():
    flags = kernels._python_flags()
    server = forkserver.kept(["colorsys"], flags)
    sock = server.wait_ready()
    assert sock is not None
    pid, more = server.process.pid, "helpers.compare.cli"  # no stage imports the comparison

    def imported_in_a_fork() -> bool:
        child = forkserver.Forked(sock, f"{__name__}:_exit_with_whether_imported", [more], [])
        child.join(timeout=60)
        assert child.exitcode in (0, 3), child.exitcode
        return child.exitcode == 0

    assert not imported_in_a_fork()
    # a later run needs more: one module that imports and one that fails (its notebook shows
    # why); the standard library's are left to the kernel
    grown = forkserver.kept(["colorsys", more, "helpers.no_such_module"], flags)
    assert grown is server and server.process.pid == pid
    assert server.wait_ready(needs=[more, "helpers.no_such_module"], timeout=60) == sock
    assert {more, "helpers.no_such_module"} <= set(
        forkserver.imported(sock).read_text().splitlines())
    assert imported_in_a_fork()  # forked after the import: the module is there
    assert server.process.poll() is None


def test_a_notebook_run_outside_a_report_forks_from_the_server_this_process_keeps(
        tmp_path, monkeypatch):
    """pipeline.execute_notebook without a kernel (a comparison's notebook): forked by the
    kept server when it is current, started on its own when it is not."""
    server = forkserver.kept(["colorsys"], kernels._python_flags())
    path = tmp_path / "recorder.ipynb"
    nbformat.write(_recorder("alone", "alone.json"), path)

    def parent_of_its_kernel() -> int:
        assert pipeline.execute_notebook(path, tmp_path / "out.ipynb",
                                         {"run_dir": str(tmp_path)}, tmp_path) is None
        return json.loads((tmp_path / "alone.json").read_text())["metrics"]["ppid"]

    assert parent_of_its_kernel() == server.process.pid
    monkeypatch.setattr(forkserver, "_origin", lambda flags: ("changed",))
    assert parent_of_its_kernel() == os.getpid()  # a stale server is not used
    assert _kernel_children() == []


class _Dropping:
    """A fork server that accepts each request and closes it unanswered, as one dying does."""

    modules: set[str] = set()

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(sock))
        self.listener.listen(4)
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drop, daemon=True)
        self.thread.start()

    def _drop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
                conn.close()
            except TimeoutError:
                pass

    def wait_ready(self, **_: object) -> Path:
        return self.sock

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


def test_take_starts_a_kernel_of_its_own_when_the_server_drops_the_request(tmp_path):
    folder = Path(tempfile.mkdtemp(dir=forkserver.socket_base()))
    with kernels.KernelPool(warmup=()) as pool:
        pool.server = _Dropping(folder / "fork")
        km = pool.take(tmp_path)
        try:
            assert km.fork_socket is None and km.is_alive()
            assert _run(km, "import os; print(os.getcwd())") == str(tmp_path.resolve())
        finally:
            kernels.shutdown(km)
    shutil.rmtree(folder, ignore_errors=True)
    assert _kernel_children() == []


def test_take_hands_over_the_prestarted_kernel_only_for_its_folder(tmp_path, capfd):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with kernels.KernelPool(warmup=("colorsys", "no_such_module_for_the_warmup")) as pool:
        pool.prestart(a)
        km = pool.take(a)
        try:
            assert km.transport == "ipc" and km.warmup_seconds is not None
            # the warm-up ran (the failing import was skipped) and left no name behind
            assert _run(km, "import os, sys; print(os.getcwd(), 'colorsys' in sys.modules, "
                            "[n for n in dir() if 'warmup' in n])") == f"{a.resolve()} True []"
        finally:
            kernels.shutdown(km)
        assert not km.is_alive()
        assert not Path(km.connection_file).exists()

        pool.prestart(a)
        other = pool.take(b)  # another folder: the prestarted kernel is dropped, one started
        try:
            assert other.cwd == b.resolve() and other.warmup_seconds is None
            assert len(_kernel_children()) == 1 and other.is_alive()
        finally:
            kernels.shutdown(other, wait=False)  # exits in the background; close() waits
        sockets = Path(other.connection_file).parent
    assert _kernel_children() == []
    assert not sockets.exists()
    assert TCP_WARNING not in "".join(capfd.readouterr())


def test_close_leaves_no_kernel_behind_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt), kernels.KernelPool(warmup=()) as pool:
        pool.take(tmp_path)  # taken and never shut down by its taker
        pool.prestart(tmp_path)  # still starting when the interrupt comes
        raise KeyboardInterrupt
    assert _kernel_children() == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_in_place_on_a_terminal(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr("sys.stdout", term)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(""), nbformat.v4.new_code_cell("y = 2")]
    progress = pipeline._Progress("[3/6] probes")
    progress.start()
    hooks = progress.hooks()
    hooks["on_notebook_start"](notebook=nb)
    for i, cell in enumerate(nb.cells):
        hooks["on_cell_start"](cell=cell, cell_index=i)
    progress.end("[3/6] probes: passed")
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("[3/6] probes: passed\n")
    assert "\r[3/6] probes: cell 1/2\x1b[K\r[3/6] probes: cell 2/2\x1b[K" in text


def test_warm_up_imports_what_the_notebook_imports_and_the_model_machinery_where_it_loads():
    from helpers import paths

    env = kernels.warmup_for(paths.NOTEBOOKS / "01_environment.ipynb")
    perf = kernels.warmup_for(paths.NOTEBOOKS / "05_performance.ipynb")
    assert env[:len(kernels.WARMUP_MODULES)] == kernels.WARMUP_MODULES
    assert "helpers.stages.environment" in env and "transformers.modeling_utils" not in env
    assert "helpers.stages.performance" in perf and perf[-1] == "transformers.modeling_utils"
    assert not any(m.endswith((".Stage", ".target", ".RunConfig")) for m in perf)  # names, not modules
    assert kernels.warmup_for(paths.NOTEBOOKS / "no_such.ipynb") == kernels.WARMUP_MODULES


def test_the_server_imports_the_first_notebooks_modules_first():
    from helpers import paths

    nbs = [paths.NOTEBOOKS / n for n in ("01_environment.ipynb", "02_model_loading.ipynb",
                                         "summary.ipynb")]
    early, rest = kernels.preload_for(nbs)
    assert early[:2] == ("helpers.plots", "ipykernel.kernelapp")
    assert "helpers.stages.environment" in early and "transformers" not in early
    assert not set(early) & set(rest)
    assert {"helpers.stages.model_loading", "transformers.modeling_utils",
            "helpers.stages.summary"} <= set(rest)
    # notebooks that load no model (a summary, a check of its own) leave the machinery out
    assert kernels.preload_for([]) == (("helpers.plots", "ipykernel.kernelapp"), ())
    early, rest = kernels.preload_for([nbs[0], nbs[2]])
    assert not set(kernels.MODEL_MACHINERY) & set(early + rest)


def _importable(monkeypatch, folder: Path, name: str, seconds: float) -> None:
    """A module `name` in `folder` (put on the server's path) whose import takes `seconds`."""
    (folder / f"{name}.py").write_text(f"import time\ntime.sleep({seconds})\n")
    monkeypatch.setenv("PYTHONPATH", f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_the_first_kernel_is_forked_between_the_servers_imports(tmp_path, monkeypatch):
    _importable(monkeypatch, tmp_path, "slow_import_for_the_server", 2.0)
    with kernels.KernelPool(warmup=(), early=("colorsys",),
                            preload=("slow_import_for_the_server", "wave")) as pool:
        pool.prestart(tmp_path, early=True)
        km = pool.take(tmp_path)
        try:
            made = _run(km, "import sys; print('colorsys' in sys.modules, 'wave' in sys.modules)")
            assert made == "True False"  # forked after the early imports, before the rest
        finally:
            kernels.shutdown(km)
        pool.prestart(tmp_path, warmup=("wave",))  # a later kernel: once its imports are made
        km = pool.take(tmp_path)
        try:
            made = forkserver.imported(pool.server.sock).read_text().split()
            assert made == ["colorsys", "slow_import_for_the_server", "wave"]
            assert km.warmup_seconds < 1.0  # nothing left to import in the kernel
            assert _run(km, "import sys; print('wave' in sys.modules)") == "True"
        finally:
            kernels.shutdown(km)
    assert _kernel_children() == []


def test_closing_the_pool_while_the_first_kernel_waits_starts_no_kernel(tmp_path, monkeypatch):
    _importable(monkeypatch, tmp_path, "slow_early_import", 30.0)
    pool = kernels.KernelPool(warmup=(), early=("slow_early_import",))
    pool.prestart(tmp_path, early=True)
    time.sleep(0.5)
    t0 = time.monotonic()
    pool.close()  # a bad input found while the server still imports: out at once
    assert time.monotonic() - t0 < 5.0
    assert _kernel_children() == [] and pool.server.process.poll() is not None


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_pool_with_preload_forks_its_kernels_from_a_server_that_made_the_imports(tmp_path):
    with kernels.KernelPool(warmup=(), preload=("colorsys", "ipykernel.kernelapp")) as pool:
        pool.prestart(tmp_path)
        km = pool.take(tmp_path)
        try:
            launcher = km.provisioner.process.pid
            pid, parent, warm, cwd = _run(km, "import os, sys; print(os.getpid(), os.getppid(), "
                                              "'colorsys' in sys.modules, os.getcwd())").split()
            # forked by the server (not the launcher jupyter_client started), imports made
            assert int(parent) == pool.server.process.pid and int(pid) != launcher
            assert warm == "True" and cwd == str(tmp_path.resolve())

            # an interrupt reaches the forked kernel through its launcher
            kc = BlockingKernelClient(**km.get_connection_info(session=True))
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=30)
                msg_id = kc.execute("import time; time.sleep(120)")
                time.sleep(1.0)
                km.interrupt_kernel()
                reply = kc.get_shell_msg(timeout=20)
                assert reply["parent_header"]["msg_id"] == msg_id
                assert reply["content"]["ename"] == "KeyboardInterrupt"
            finally:
                kc.stop_channels()
        finally:
            kernels.shutdown(km)
        assert _wait_gone(int(pid)) and not km.is_alive()

        # a launcher killed outright takes its kernel with it
        pool.prestart(tmp_path)
        km = pool.take(tmp_path)
        pid = int(_run(km, "import os; print(os.getpid())"))
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        assert _wait_gone(pid)
        kernels.shutdown(km, now=True)

        # a kernel that dies mid-cell is seen dead, with its exit status
        pool.prestart(tmp_path)
        km = pool.take(tmp_path)
        kc = BlockingKernelClient(**km.get_connection_info(session=True))
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            kc.execute("import os; os._exit(3)")
            end = time.monotonic() + 10
            while km.is_alive() and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            kc.stop_channels()
        assert not km.is_alive() and km.provisioner.process.returncode == 3
        kernels.shutdown(km, now=True)
        server = pool.server.process
    assert server.poll() is not None  # the pool stopped its server
    assert _kernel_children() == []


def test_a_launcher_without_a_server_starts_the_plain_kernel(tmp_path):
    dead = tmp_path / "not-a-socket"
    dead.write_text("")
    km = kernels.start_kernel(tmp_path, tmp_path / "k", warmup=(), fork_socket=dead)
    try:
        # the launcher became the kernel (exec): the process jupyter_client started answers
        assert _run(km, "import os; print(os.getpid())") == str(km.provisioner.process.pid)
    finally:
        kernels.shutdown(km)
    assert not km.is_alive()
