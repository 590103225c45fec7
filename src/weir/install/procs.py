"""Small drivers ``weir up`` runs on: processes, ip(8), sysctls and HTTP, in the node's network
namespace when the node has one (``in_node``; commands through ``nsenter``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from weir.netns import NetNS, run_in


class ProcError(Exception):
    """A process or command did not do what was asked; the message says why (with its log's end)."""


class InNode(Protocol):
    @property
    def node_netns(self) -> str: ...


def in_node(state: InNode, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the node's network namespace (the host's when it has none)."""
    return run_in(NetNS(state.node_netns), fn) if state.node_netns else fn()


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str] | None:
    """(status, body), or None when nothing answers. Call it where the address is reachable."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tail(path: str, lines: int = 15) -> str:
    """The last ``lines`` lines of a log ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def start_daemon(argv: Sequence[str], log_path: str, netns: str) -> int:
    """Start ``argv`` detached (its own session, output appended to ``log_path``), in ``netns`` when
    given; returns its pid."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc.pid


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps it when it is our child."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:  # SIGKILL takes effect soon, not at once
            time.sleep(0.01)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(what: str, check: Callable[[], bool], timeout: float, pid: int | None = None, log: str = "") -> None:
    """Poll ``check`` until it holds; ProcError naming ``what`` (with the end of ``log``) when the
    process ``pid`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not check():
        if pid is not None and not alive(pid):
            raise ProcError(f"{what}: the process exited" + (f"; the end of {log}:\n{tail(log)}" if log else ""))
        if time.monotonic() > deadline:
            raise ProcError(f"{what}: not ready after {timeout:g}s" + (f"; the end of {log}:\n{tail(log)}"
                                                                      if log else ""))
        time.sleep(0.2)


def ip(state: InNode, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` in the node's namespace; ProcError with ip's message when it fails (``check``)."""
    prefix = ["nsenter", f"--net={state.node_netns}", "--"] if state.node_netns else []
    out = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise ProcError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def read_sysctl(key: str) -> str:
    with open(f"/proc/sys/{key}") as f:
        return f.read().strip()


def write_sysctl(key: str, value: str) -> None:
    with open(f"/proc/sys/{key}", "w") as f:
        f.write(value)
