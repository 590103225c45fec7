"""The real Envoy under weir's supervisor, as uid 1337, in a network namespace the test makes.

The supervisor runs the way the sidecar agent does: a whole process inside the pod's
namespace (``ip netns exec NS python this-file ...`` runs :func:`drive`), so Envoy, its
restarts and the admin requests all live there. The driver reports JSON lines on stdout and
waits for the test's word on stdin between steps; the test checks ``/proc`` itself and kills
Envoy with SIGKILL. Every Envoy pid seen is killed in ``finally`` (after checking it is still
a uid-1337 Envoy), and the namespace is deleted.

The other tests cover the uid-1337 plumbing: the permission check, the fallback copy of the
binary, and the bootstrap-readability check, with real processes run as 1337.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from weir.agent.bootstrap import BootstrapParams, parse_address, render_bootstrap
from weir.agent.envoy import (
    BaseId,
    EnvoyError,
    EnvoyProcess,
    access_problem,
    envoy_args,
    find_envoy_binary,
    restart_delay,
    runnable_binary,
)

STEP = 15.0  # seconds any one step may take
NOT_LIVE = ("PRE_INITIALIZING", "INITIALIZING", "LIVE")


# ---- the driver: runs inside the namespace, as the sidecar agent would ------------------------


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def drive(config: str, log: str) -> None:
    """Start Envoy, report, wait for "killed", report the restart, wait for "stop", drain and stop."""
    envoy = EnvoyProcess(find_envoy_binary(), Path(config), log_path=Path(log), cwd=Path(config).parent,
                         drain_time=1.0)
    try:
        envoy.start()
        emit(event="up", pid=envoy.pid, state=envoy.wait_admin(STEP), live=envoy.ready(0.3))
        if sys.stdin.readline().strip() != "killed":
            return
        restarted = envoy.wait_restarts(1, STEP)
        emit(event="restarted", ok=restarted, pid=envoy.pid, restarts=envoy.restarts, exits=envoy.exits,
             state=envoy.wait_admin(STEP) if restarted else None)
        if sys.stdin.readline().strip() != "stop":
            return
        started = time.monotonic()
        code = envoy.drain_and_stop(grace=1.0, kill_after=5.0)
        emit(event="stopped", returncode=code, seconds=time.monotonic() - started, state=envoy.server_state())
    finally:
        envoy.drain_and_stop(grace=0.0, kill_after=2.0)


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ---- helpers for the test side ------------------------------------------------------------------


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def is_our_envoy(pid: int) -> bool:
    try:
        return status(pid)["Uid"].split()[0] == "1337" and Path(f"/proc/{pid}/exe").resolve().name == "envoy"
    except (OSError, KeyError):
        return False


class Driver:
    """The driver process, with its stdout read by a thread into a queue (every read bounded)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="driver-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def event(self, name: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=STEP + 5)
        except queue.Empty:
            pytest.fail(f"no {name!r} event from the driver within {STEP + 5} s; {self.stderr()}")
        event: dict[str, Any] = json.loads(line)
        assert event["event"] == name, f"{event}; {self.stderr()}"
        return event

    def stderr(self) -> str:
        """The driver's stderr once it has ended (killing it if it has not)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STEP)
        assert self.proc.stderr is not None
        return f"driver stderr: {self.proc.stderr.read()}"

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()


def write_bootstrap(workdir: Path) -> Path:
    # Nothing listens on 127.0.0.1:15010 in a fresh namespace: ADS never connects, Envoy runs anyway.
    params = BootstrapParams(pod_name="app-0", namespace="default", pod_ips=("10.88.0.9",),
                             labels={"app": "app"}, xds_address=parse_address("127.0.0.1:15010"))
    config = workdir / "envoy-rev.json"
    config.write_text(json.dumps(render_bootstrap(params), indent=2))
    config.chmod(0o644)
    return config


# ---- the scenario -------------------------------------------------------------------------------


def test_envoy_as_1337_restarted_after_sigkill_and_drained(workdir: Path, netns_name: str) -> None:
    config = write_bootstrap(workdir)
    log = workdir / "envoy.log"
    seen: set[int] = set()
    driver = Driver(["ip", "netns", "exec", netns_name, sys.executable, __file__, str(config), str(log)])
    try:
        up = driver.event("up")
        first = up["pid"]
        seen.add(first)
        assert up["state"] in NOT_LIVE  # the admin answers, whatever the state
        assert up["live"] is False  # no control plane: Envoy waits for its first CDS/LDS, never LIVE
        for key in ("Uid", "Gid"):
            assert status(first)[key].split() == ["1337"] * 4, status(first)
        assert status(first)["Groups"] == ""
        assert os.readlink(f"/proc/{first}/ns/net") == os.readlink(f"/proc/{driver.proc.pid}/ns/net")
        assert os.readlink(f"/proc/{first}/ns/net") != os.readlink("/proc/self/ns/net")

        os.kill(first, signal.SIGKILL)
        driver.say("killed")
        restarted = driver.event("restarted")
        second = restarted["pid"]
        seen.add(second)
        assert restarted["ok"] is True, restarted
        assert restarted["restarts"] == 1
        assert restarted["exits"] == [-signal.SIGKILL]
        assert second != first
        assert restarted["state"] in NOT_LIVE
        assert status(second)["Uid"].split() == ["1337"] * 4

        driver.say("stop")
        stopped = driver.event("stopped")
        assert stopped["returncode"] == 0, stopped  # SIGTERM ended it cleanly; no SIGKILL was needed
        assert 1.0 <= stopped["seconds"] < 7.0  # the grace period was waited out
        assert stopped["state"] is None  # the admin port is gone
        assert not Path(f"/proc/{second}").exists()
        assert driver.proc.wait(STEP) == 0
        assert log.stat().st_size > 0  # Envoy's output went to the log file
    finally:
        for pid in seen:
            if is_our_envoy(pid):
                os.kill(pid, signal.SIGKILL)
        if driver.proc.poll() is None:
            driver.proc.kill()
        driver.proc.wait(STEP)


# ---- uid 1337 and the binary --------------------------------------------------------------------


def test_find_envoy_binary_is_the_wheels_executable_not_its_wrapper() -> None:
    binary = find_envoy_binary()
    assert binary.parent.name == "_bin"
    assert binary.read_bytes()[:4] == b"\x7fELF"


def test_the_found_binary_runs_as_1337() -> None:
    binary = runnable_binary(find_envoy_binary(), fallback_dir=Path("/nonexistent-not-needed"))
    done = subprocess.run([str(binary), "--version"], user=1337, group=1337, extra_groups=[], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "version" in done.stdout


def test_unreachable_binary_is_copied_once_for_1337(workdir: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="weir-private-"))  # 0700: uid 1337 cannot enter it
    try:
        binary = private / "envoy"
        shutil.copy2("/bin/true", binary)
        binary.chmod(0o755)
        assert access_problem(binary, 1337, {1337}, os.X_OK) is not None
        with pytest.raises(PermissionError):
            subprocess.run([str(binary)], user=1337, group=1337, extra_groups=[], check=False)

        fallback = workdir / "var-lib-weir-envoy"
        copy = runnable_binary(binary, 1337, 1337, fallback)
        assert copy == fallback / "envoy"
        assert subprocess.run([str(copy)], user=1337, group=1337, extra_groups=[], check=False).returncode == 0
        inode = copy.stat().st_ino
        assert runnable_binary(binary, 1337, 1337, fallback).stat().st_ino == inode  # kept, not copied again
    finally:
        shutil.rmtree(private)


@pytest.mark.parametrize(("mode", "want", "problem"), [
    (0o644, os.R_OK, None),
    (0o600, os.R_OK, "cannot r"),
    (0o755, os.R_OK | os.X_OK, None),
    (0o744, os.X_OK, "cannot x"),
])
def test_access_problem_reads_mode_bits(workdir: Path, mode: int, want: int, problem: str | None) -> None:
    path = workdir / "file"
    path.write_text("x")
    path.chmod(mode)
    found = access_problem(path, 1337, {1337}, want)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_unreadable_bootstrap_is_refused_before_spawning(workdir: Path) -> None:
    config = write_bootstrap(workdir)
    config.chmod(0o600)
    envoy = EnvoyProcess(find_envoy_binary(), config, log_path=workdir / "envoy.log")
    with pytest.raises(EnvoyError, match="not readable by uid 1337"):
        envoy.start()
    assert envoy.pid is None
    assert envoy.drain_and_stop(0.0) is None


# ---- pure pieces ---------------------------------------------------------------------------------


def test_restart_backoff_doubles_from_one_second_to_thirty() -> None:
    assert [restart_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(10_000) == 30


@pytest.mark.parametrize(("base_id", "flags"), [
    (None, ["--disable-hot-restart"]),
    ("dynamic", ["--use-dynamic-base-id"]),
    (7, ["--base-id", "7"]),
])
def test_envoy_args(base_id: BaseId, flags: list[str]) -> None:
    argv = envoy_args(Path("/x/envoy"), Path("/c.json"), concurrency=2, base_id=base_id, log_level="info",
                      drain_time=5)
    assert argv[:3] == ["/x/envoy", "-c", "/c.json"]
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert argv[argv.index("--drain-time-s") + 1] == "5"
    assert argv[argv.index("-l") + 1] == "info"
    assert argv[-len(flags):] == flags
