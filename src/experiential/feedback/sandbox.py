"""Run untrusted, model-written Python in a separate process that cannot hurt the host or hang the
caller.

Every run gets a fresh temporary directory (its working directory and ``HOME``, removed afterwards),
its own process group (killed on the wall-clock timeout, and after every run so nothing it spawned
lives on), ``resource`` limits (address space, CPU time, file size, no core dumps) and, inside the
child before the code runs, a guard in the manner of HumanEval's ``reliability_guard``: process
creation, signals, file deletion, directory changes, network sockets and writes outside the
temporary directory raise ``PermissionError("... is disabled in the sandbox")``. Like HumanEval's,
this guard stops accidents and naive attacks; it is not a security boundary against code written to
escape it (run under a container for that).

Each of a fork bomb, an infinite loop, a 10 GB allocation, ``os.system('rm -rf ~')``, a socket and a
write outside the directory ends as a clean failed :class:`SandboxResult` with a one-line message.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

MAX_OUTPUT = 20_000
"""Characters of stdout/stderr kept in a result."""

_GUARD = r'''
import builtins, io, os, shutil, socket, subprocess, sys, traceback, faulthandler
_ROOT = os.path.realpath(os.getcwd())
_exit, _open, _real_stdout = os._exit, builtins.open, sys.stdout
faulthandler.disable()

def _disabled(name):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refuse

for _mod, _names in ((os, "system kill killpg fork forkpty putenv unsetenv remove unlink rmdir "
                          "removedirs rename renames replace truncate chmod chown lchown fchmod "
                          "fchown chdir fchdir chroot setuid setgid seteuid setegid setsid "
                          "execv execve execl execle execlp execlpe execvp execvpe spawnl spawnle "
                          "spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe popen posix_spawn "
                          "posix_spawnp _exit abort"),
                     (shutil, "rmtree move chown copytree copyfile copy copy2 disk_usage"),
                     (subprocess, "Popen run call check_call check_output getoutput "
                                  "getstatusoutput"),
                     (builtins, "exit quit help"), (sys, "exit")):
    for _n in _names.split():
        if hasattr(_mod, _n):
            setattr(_mod, _n, _disabled(f"{_mod.__name__}.{_n}"))

class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

import _socket
socket.socket = _socket.socket = socket.SocketType = _NoSocket
for _n in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _n, _disabled(f"network access (socket.{_n})"))
for _m in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "resource", "psutil",
           "pty", "ipdb", "joblib", "tkinter"):
    sys.modules[_m] = None

def _inside(path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:
        return True  # a file descriptor: already opened
    return p == _ROOT or p.startswith(_ROOT + os.sep)

_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError("writing outside the sandbox directory is disabled")
    return _open(file, mode, *args, **kwargs)

_os_open = os.open
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE and not _inside(path):
        raise PermissionError("writing outside the sandbox directory is disabled")
    return _os_open(path, flags, *args, **kwargs)

def _guard_path(name):
    real = getattr(os, name)
    def guarded(path, *args, **kwargs):
        if not _inside(path):
            raise PermissionError(f"os.{name} outside the sandbox directory is disabled")
        return real(path, *args, **kwargs)
    return guarded

builtins.open = io.open = _guarded_open
os.open = _guarded_os_open
for _n in ("mkdir", "makedirs", "symlink", "link", "mkfifo", "mknod", "utime"):
    setattr(os, _n, _guard_path(_n))

_FILES = __FILES__
_namespace = {"__name__": "__main__", "__builtins__": builtins}
try:
    for _name in _FILES:
        with _open(_name, encoding="utf-8") as _f:
            _source = _f.read()
        exec(compile(_source, _name, "exec"), _namespace)
except BaseException as _e:  # noqa: BLE001 - report whatever the code raised, then fail
    sys.stdout.flush()
    _frames = [f for f in traceback.extract_tb(_e.__traceback__) if f.filename in _FILES]
    if isinstance(_e, SystemExit):
        print(f"SystemExit: the code called exit({_e.code!r}) before finishing", file=sys.stderr)
    else:
        if _frames:
            print("Traceback (most recent call last):", file=sys.stderr)
            print("".join(traceback.format_list(_frames)), end="", file=sys.stderr)
        print("".join(traceback.format_exception_only(type(_e), _e)), end="", file=sys.stderr)
    sys.stderr.flush()
    _exit(1)
sys.stdout.flush()
sys.stderr.flush()
_exit(0)
'''


@dataclass
class SandboxResult:
    ok: bool
    status: str
    """``passed`` (exit 0), ``failed`` (an exception), ``timeout`` (wall clock or CPU time),
    ``memory`` (over the memory limit), ``killed`` (another signal), ``error`` (the sandbox itself
    could not run the code)."""
    stdout: str
    stderr: str
    message: str
    """One line saying why, e.g. "timed out after 5.0 s (wall clock)"."""
    duration: float


def _limits(memory_mb: int, cpu_seconds: int, file_mb: int) -> None:
    """Runs in the child between fork and exec."""
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # not enforced for root; the guard disables fork anyway
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    except (ValueError, OSError):
        pass


def run_python(code: str | Mapping[str, str], *, timeout: float = 10.0, memory_mb: int = 512,
               cpu_seconds: int | None = None, file_mb: int = 16) -> SandboxResult:
    """Run ``code`` (one program, or ``{filename: source}`` executed in order in one namespace, so
    a traceback names ``solution.py`` and ``test.py`` instead of a merged file). Never raises for
    anything the code does; always returns within about ``timeout`` + 1 s."""
    files = {"solution.py": code} if isinstance(code, str) else dict(code)
    workdir = tempfile.mkdtemp(prefix="experiential-sandbox-")
    start = time.monotonic()
    proc = None
    try:
        for name, source in files.items():
            Path(workdir, name).write_text(source, encoding="utf-8")
        Path(workdir, "_runner.py").write_text(
            _GUARD.replace("__FILES__", json.dumps(list(files))), encoding="utf-8")
        out_path, err_path = Path(workdir, "_stdout"), Path(workdir, "_stderr")
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        cpu = cpu_seconds or int(timeout) + 1
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "_runner.py"], cwd=workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=lambda: _limits(memory_mb, cpu, file_mb))
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)
        stdout = out_path.read_text("utf-8", errors="replace")[:MAX_OUTPUT]
        stderr = err_path.read_text("utf-8", errors="replace")[:MAX_OUTPUT]
        duration = time.monotonic() - start
        status, message = _classify(proc.returncode, timed_out, stderr, timeout, memory_mb)
        return SandboxResult(status == "passed", status, stdout, stderr, message, duration)
    except Exception as e:  # noqa: BLE001 - the sandbox failing is a result too
        if proc is not None:
            _kill_group(proc)
        return SandboxResult(False, "error", "", "", f"the sandbox could not run the code: "
                             f"{type(e).__name__}: {e}", time.monotonic() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the whole process group (whatever the code spawned), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _classify(code: int | None, timed_out: bool, stderr: str, timeout: float,
              memory_mb: int) -> tuple[str, str]:
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if timed_out:
        return "timeout", f"timed out after {timeout:.1f} s (wall clock)"
    if code == 0:
        return "passed", "ran to the end"
    if "MemoryError" in last or code == -signal.SIGSEGV and not last:
        return "memory", f"exceeded the {memory_mb} MB memory limit ({last or 'killed'})"
    if code == -signal.SIGXCPU:
        return "timeout", "exceeded the CPU-time limit"
    if code == -signal.SIGXFSZ:
        return "failed", "wrote more than the file-size limit"
    if code is not None and code < 0:
        return "killed", f"killed by signal {signal.Signals(-code).name}"
    return "failed", last or f"exited with status {code}"


def run_many(codes: Sequence[str | Mapping[str, str]], *, workers: int | None = None,
             **limits: float) -> list[SandboxResult]:
    """Run many programs in parallel (one process each; ``workers`` at a time, default all
    cores). Results come back in input order."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda c: run_python(c, **limits), codes))  # type: ignore[arg-type]
