"""Running generated Python against its tests, fenced in: bench.eval's executor.

Each program runs in a fresh `python -I` child, in a temporary directory of its
own, with a wall-clock timeout and limits on CPU time and memory. An audit hook
installed before the program (audit hooks cannot be removed) refuses network
use, new processes, and writes, renames or deletions outside that directory.
Run as root, the child also gets a network namespace of its own (no interface
but loopback), so even code that slips past the hook reaches no network. It
keeps the caller's user: Python itself often lives where `nobody` cannot read.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Prepended to every program: the fence. `_root` is the program's own folder.
GUARD = r"""
import os as _os, sys as _sys
_root = _os.path.realpath(_os.getcwd())
def _inside(path):
    try:
        real = _os.path.realpath(_os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == _root or real.startswith(_root + _os.sep)
_WRITE = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
_PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
          "os.truncate", "os.chmod", "os.chown", "shutil.rmtree", "shutil.move", "os.utime"}
def _fence(event, args):
    if event.startswith("socket.") and event not in ("socket.gethostname",):
        raise PermissionError("the sandbox has no network")
    if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork",
                 "os.forkpty", "pty.spawn", "ctypes.dlopen"):
        raise PermissionError("the sandbox runs no other programs")
    if event == "open":
        path, mode, flags = (list(args) + [None, None, 0])[:3]
        writing = bool((flags or 0) & _WRITE) or any(c in (mode or "") for c in "wax+")
        if writing and isinstance(path, (str, bytes, _os.PathLike)) and not _inside(path):
            raise PermissionError("the sandbox writes only in its own folder")
    elif event in _PATHS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, _os.PathLike)) and not _inside(path):
                raise PermissionError("the sandbox changes only its own folder")
_sys.addaudithook(_fence)
del _fence
"""

# After the fence: the program, read from stdin and compiled on its own, so that its
# `from __future__` imports stay first (an edited file may well start with one).
RUN = r"""
import builtins as _builtins
_program = compile(_sys.stdin.read(), "<answer>", "exec")
exec(_program, {"__name__": "__main__", "__builtins__": _builtins})
"""

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Outcome:
    """How a program ended: `passed`, `syntax_error`, `wrong_answer` or `timeout`."""

    kind: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.kind == "passed"


def _fence_process(cpu_seconds: int, memory_bytes: int) -> None:
    """In the child, before exec: limits, and as root a namespace and user of its own."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    os.setsid()
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)  # best effort: a container may refuse it


def run_program(
    program: str, *, timeout: float = 10.0, memory_mb: int = 1024, cpu_seconds: int = 10
) -> Outcome:
    """Run `program` fenced in (see the module docstring); classify how it ended."""
    try:
        compile(program, "<answer>", "exec")
    except (SyntaxError, ValueError) as exc:
        return Outcome("syntax_error", str(exc)[:200])
    with tempfile.TemporaryDirectory(prefix="codegen-eval-") as folder:
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-c", GUARD + RUN],
                input=program,
                cwd=folder,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=lambda: _fence_process(cpu_seconds, memory_mb << 20),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Outcome("timeout", f"over {timeout:g} s")
    if result.returncode == 0:
        return Outcome("passed")
    if result.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome("timeout", f"CPU limit of {cpu_seconds} s")
    last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    return Outcome("wrong_answer", last[:200])
