"""Run untrusted, model-written Python in a separate process that cannot hurt the host or hang the
caller.

Every run gets a fresh temporary directory whose ``work/`` subdirectory is the code's working
directory, ``HOME`` and ``TMPDIR`` (the runner and the captured output sit beside it, out of the
code's reach); the whole directory is removed afterwards. The child is a new session (its own
process group, killed with SIGKILL on the wall-clock timeout and after every run, so nothing it
spawned lives on), with ``resource`` limits set between fork and exec: address space, CPU time, file
size, no core dumps, and a process count. When the caller is root the child also gets its own empty
network namespace (a real barrier, not just a Python-level one).

Inside the child, before the code runs, a guard in the manner of HumanEval's ``reliability_guard``
replaces process creation, signals, ``chown``/``chdir``/``setuid`` and the like (in ``os`` *and*
``posix``, which exports the same functions), ``subprocess``, ``exit``/``quit`` and sockets with
functions that raise ``PermissionError("os.system is disabled in the sandbox")``, so the reason
reads clearly in the traceback. Writing, deleting, renaming or chmod-ing is allowed inside
``work/`` only (``tempfile`` needs it) and refused outside ("writing outside the sandbox directory
is disabled", "shutil.rmtree outside the sandbox directory is disabled"), through ``open``,
``io.open``, ``io.FileIO``, ``os.open``, ``os.remove``/``unlink``/``rename``/... and
``shutil.rmtree``/``move``, ``dir_fd`` arguments included. ``ctypes``, ``multiprocessing``,
``resource`` and ``psutil`` cannot be imported. Like HumanEval's, the guard stops accidents and
naive attacks; it is not a security boundary against code written to escape it. Note that
``RLIMIT_NPROC`` is not enforced for root, so there the disabled fork is what stops a fork bomb;
run under a container or an unprivileged user for a real boundary.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
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
"""Characters of stdout/stderr kept in a result: head and tail (a traceback is at the end)."""

NPROC_MARGIN = 64
"""Processes/threads the child may add to the user's current count (belt and braces: fork is
already disabled by the guard, and the kernel ignores the limit for root)."""

_GUARD = r'''
import builtins, io, _io, os, posix, shutil, socket, _socket, subprocess, sys, traceback
import faulthandler
_ROOT = os.path.realpath(os.getcwd())
_exit, _open, _FileIO, _os_open, _realpath = os._exit, io.open, io.FileIO, os.open, os.path.realpath
faulthandler.disable()

def _disabled(name):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refuse

_OS = ("system kill killpg fork forkpty chown lchown fchown fchmod chflags lchflags chdir fchdir "
       "chroot setuid setgid seteuid setegid setreuid setregid setresuid setresgid setgroups "
       "setsid setpgid setpgrp execv execve execl execle execlp execlpe execvp execvpe spawnl "
       "spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe popen posix_spawn posix_spawnp "
       "plock abort _exit")
for _mod, _names in ((os, _OS), (posix, _OS), (shutil, "chown"),
                     (subprocess, "Popen run call check_call check_output getoutput "
                                  "getstatusoutput"),
                     (builtins, "exit quit help"), (sys, "exit")):
    for _n in _names.split():
        if hasattr(_mod, _n):
            setattr(_mod, _n, _disabled(f"{_mod.__name__}.{_n}"))
if hasattr(subprocess, "_posixsubprocess"):
    subprocess._posixsubprocess.fork_exec = _disabled("_posixsubprocess.fork_exec")

_NET = "network access is disabled in the sandbox"
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError(_NET)

def _no_network(*args, **kwargs):
    raise PermissionError(_NET)

socket.socket = _socket.socket = socket.SocketType = _NoSocket
for _n in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
           "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    setattr(socket, _n, _no_network)
    if hasattr(_socket, _n):
        setattr(_socket, _n, _no_network)

_BLOCKED = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing",
            "resource", "psutil", "pty", "ipdb", "joblib", "tkinter"}
class _BlockImports:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ImportError(f"importing {name} is disabled in the sandbox", name=name)
        return None
for _m in list(sys.modules):
    if _m.partition(".")[0] in _BLOCKED:
        del sys.modules[_m]
sys.meta_path.insert(0, _BlockImports)

def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True  # an already-open file descriptor
    try:
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(p):
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = _realpath(p)
    except (TypeError, ValueError, OSError):
        return False
    return p == _ROOT or p.startswith(_ROOT + os.sep)

_OUTSIDE = "writing outside the sandbox directory is disabled"
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _guarded_open(file, mode="r", *args, **kwargs):
    if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(_OUTSIDE)
    return _open(file, mode, *args, **kwargs)

class _GuardedFileIO(_FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
            raise PermissionError(_OUTSIDE)
        super().__init__(file, mode, *args, **kwargs)

def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE and not _inside(path, kwargs.get("dir_fd")):
        raise PermissionError(_OUTSIDE)
    return _os_open(path, flags, *args, **kwargs)

def _guard_paths(mod, name, which):
    """Allowed only when the path arguments at positions ``which`` are inside the directory."""
    real = getattr(mod, name)
    def guarded(*args, **kwargs):
        paths = (args[0] if args else kwargs.get("path", kwargs.get("name", kwargs.get("src"))),
                 args[1] if len(args) > 1 else kwargs.get("dst"))
        fds = ((kwargs.get("src_dir_fd"), kwargs.get("dst_dir_fd")) if len(which) == 2
               else (kwargs.get("dir_fd"),))
        if not all(paths[i] is None or _inside(paths[i], fd) for i, fd in zip(which, fds)):
            raise PermissionError(f"{mod.__name__}.{name} outside the sandbox directory is "
                                  "disabled")
        return real(*args, **kwargs)
    return guarded

builtins.open = io.open = _io.open = _guarded_open
io.FileIO = _io.FileIO = _GuardedFileIO
os.open = posix.open = _guarded_os_open
# Deleting, renaming or creating inside the sandbox directory is harmless (tempfile needs it).
_ONE, _TWO, _DST = (0,), (0, 1), (1,)
_PATHS = ([(m, n, _ONE) for m in (os, posix) for n in "remove unlink rmdir removedirs truncate "
           "chmod lchmod mkdir makedirs mkfifo mknod utime".split()]
          + [(m, n, _TWO) for m in (os, posix) for n in "rename renames replace link".split()]
          + [(os, "symlink", _DST), (posix, "symlink", _DST), (shutil, "rmtree", _ONE),
             (shutil, "move", _TWO)])
for _mod, _n, _which in _PATHS:
    if hasattr(_mod, _n):
        setattr(_mod, _n, _guard_paths(_mod, _n, _which))

# Files run in order in one namespace (so the tests see the solution's names); only the last runs
# as __main__, so an attempt's `if __name__ == "__main__":` demo does not run under the tests.
_FILES = __FILES__
_namespace = {"__builtins__": builtins}
try:
    for _i, _name in enumerate(_FILES):
        with _open(_name, encoding="utf-8") as _f:
            _source = _f.read()
        _namespace["__name__"] = "__main__" if _i == len(_FILES) - 1 else _name.rsplit(".", 1)[0]
        exec(compile(_source, _name, "exec"), _namespace)
except BaseException as _e:  # noqa: BLE001 - report whatever the code raised, then fail
    try:
        sys.stdout.flush()
    except BaseException:
        pass
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
    ``memory`` (over the memory limit, or killed by SIGKILL: the out-of-memory killer), ``killed``
    (another signal), ``error`` (the sandbox itself could not run the code)."""
    stdout: str
    stderr: str
    message: str
    """One line saying why, e.g. "timed out after 5.0 s (wall clock)"."""
    duration: float


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not glibc/musl
    _LIBC = None
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


def _limits(memory_mb: int, cpu_seconds: int, file_mb: int, nproc: int) -> None:
    """Runs in the child between fork and exec (no imports, no locks)."""
    def cap(kind: int, soft: int, hard: int) -> None:
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(kind, (soft, hard))

    cap(resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20)
    cap(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)  # SIGXCPU, then SIGKILL a second later
    cap(resource.RLIMIT_FSIZE, file_mb << 20, file_mb << 20)
    cap(resource.RLIMIT_CORE, 0, 0)
    try:
        cap(resource.RLIMIT_NPROC, nproc, nproc)
    except (ValueError, OSError):
        pass
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # the caller died: die too
        if os.geteuid() == 0:
            _LIBC.unshare(_CLONE_NEWNET)  # best effort: an empty network namespace


def _user_tasks() -> int:
    """Processes+threads of this user (what RLIMIT_NPROC counts); 0 for root, which it ignores."""
    uid = os.getuid()
    if uid == 0:
        return 0
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def run_python(code: str | Mapping[str, str], *, timeout: float = 10.0, memory_mb: int = 512,
               cpu_seconds: int | None = None, file_mb: int = 16) -> SandboxResult:
    """Run ``code`` (one program, or ``{filename: source}`` executed in order in one namespace, so
    a traceback names ``solution.py`` and ``test.py`` instead of a merged file; only the last file
    runs as ``__main__``). Never raises for anything the code does; always returns within about
    ``timeout`` + 1 s."""
    files = {"solution.py": code} if isinstance(code, str) else dict(code)
    base = tempfile.mkdtemp(prefix="experiential-sandbox-")
    start = time.monotonic()
    proc = None
    try:
        for name in files:
            if not name or os.sep in name or name.startswith("."):
                raise ValueError(f"bad file name {name!r}: use a plain name like 'solution.py'")
        work = Path(base, "work")
        work.mkdir()
        for name, source in files.items():
            Path(work, name).write_text(source, encoding="utf-8")
        runner = Path(base, "runner.py")
        runner.write_text(_GUARD.replace("__FILES__", json.dumps(list(files))), encoding="utf-8")
        out_path, err_path = Path(base, "stdout"), Path(base, "stderr")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cpu = cpu_seconds or int(timeout) + 1
        nproc = _user_tasks() + NPROC_MARGIN
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-X", "utf8", str(runner)], cwd=work, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=lambda: _limits(memory_mb, cpu, file_mb, nproc))
            try:
                timed_out = not _wait_exit(proc.pid, timeout)
            finally:
                _kill_group(proc)
        stdout = _read(out_path)
        stderr = _read(err_path)
        duration = time.monotonic() - start
        status, message = _classify(proc.returncode, timed_out, stderr, timeout, memory_mb, cpu)
        return SandboxResult(status == "passed", status, stdout, stderr, message, duration)
    except Exception as e:  # noqa: BLE001 - the sandbox failing is a result too
        if proc is not None and proc.returncode is None:
            _kill_group(proc)
        return SandboxResult(False, "error", "", "", f"the sandbox could not run the code: "
                             f"{type(e).__name__}: {e}", time.monotonic() - start)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until the child exits, *without reaping it* (so its process-group id cannot be reused
    by an unrelated process before :func:`_kill_group`). False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    if poller.poll(left * 1000):
                        return True
                except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
                    continue
        finally:
            os.close(fd)
    deadline, pause = time.monotonic() + timeout, 0.001
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return False


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the whole process group (whatever the code spawned), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _read(path: Path, limit: int = MAX_OUTPUT) -> str:
    """The file as text, its head and tail when longer than ``limit`` characters."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if size <= 4 * limit:
            text = f.read().decode("utf-8", errors="replace")
        else:
            head = f.read(2 * limit).decode("utf-8", errors="replace")
            f.seek(-2 * limit, os.SEEK_END)
            text = head + f.read().decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text
    half = limit // 2
    return (text[:half] + f"\n... [{len(text) - 2 * half} characters cut] ...\n"
            + text[-half:])


def _classify(code: int | None, timed_out: bool, stderr: str, timeout: float,
              memory_mb: int, cpu: int) -> tuple[str, str]:
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if timed_out:
        return "timeout", f"timed out after {timeout:.1f} s (wall clock)"
    if code == 0:
        return "passed", "ran to the end"
    if last.startswith("MemoryError") or "[Errno 12] Cannot allocate memory" in last:
        return "memory", f"exceeded the {memory_mb} MB memory limit ({last})"
    if code == -signal.SIGXCPU:
        return "timeout", f"exceeded the {cpu} s CPU-time limit"
    if code == -signal.SIGKILL:
        return "memory", ("was killed by SIGKILL, most likely by the out-of-memory killer "
                          f"(memory limit {memory_mb} MB)")
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
