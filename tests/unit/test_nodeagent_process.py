"""The node agent's settings, and the process: it serves STATUS to the real plugin and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weir.cni.bundle import build
from weir.nodeagent.agent import config_from
from weir.nodeagent.settings import ConfigError


def test_flags_win_over_istio_env_names(tmp_path: Path) -> None:
    env = {"CNI_AGENT_RUN_DIR": "/run/a", "EXCLUDE_NAMESPACES": "kube-system, istio-system", "POD_NAMESPACE": "weir",
           "NATIVE_NFTABLES": "true"}
    config = config_from({"run_dir": None}, env)
    assert config.run_dir == "/run/a"
    assert config.exclude_namespaces == {"kube-system", "istio-system"}
    assert config.pod_namespace == "weir"
    assert config.native_nftables
    assert config_from({"run_dir": str(tmp_path)}, env).run_dir == str(tmp_path)


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"run_dir": "relative"}, {}, "--run-dir: invalid value 'relative'"),
    ({}, {"CNI_AGENT_RUN_DIR": "x"}, "CNI_AGENT_RUN_DIR: invalid value 'x'"),
    ({}, {"NATIVE_NFTABLES": "maybe"}, "NATIVE_NFTABLES: invalid value 'maybe'"),
    ({"pods_dir": "/nonexistent/dir"}, {}, "--pods-dir: '/nonexistent/dir' is not a directory"),
])
def test_bad_settings_fail_at_start_naming_them(flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from(flags, env)


def _status(plugin: Path, run_dir: Path) -> subprocess.CompletedProcess[bytes]:
    conf = json.dumps({"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "weir-cni",
                       "cni_agent_run_dir": str(run_dir), "agent_timeout": 2}).encode()
    return subprocess.run([str(plugin)], input=conf, env={"CNI_COMMAND": "STATUS", "CNI_PATH": str(plugin.parent)},
                          capture_output=True, timeout=10, check=False)


def test_agent_process_serves_status_and_stops_on_sigterm(tmp_path: Path) -> None:
    plugin = Path(build(str(tmp_path / "bin" / "weir-cni")))
    run_dir = tmp_path / "run"
    not_running = _status(plugin, run_dir)
    assert not_running.returncode != 0
    assert json.loads(not_running.stdout)["code"] == 50
    agent = subprocess.Popen([sys.executable, "-m", "weir", "node-agent", "run", "--run-dir", str(run_dir),
                              "--pods-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not (run_dir / "pluginevent.sock").exists():
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "the agent did not open its socket"
            time.sleep(0.05)
        ready = _status(plugin, run_dir)
        assert ready.returncode == 0, ready.stdout
        assert ready.stdout == b""
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert not (run_dir / "pluginevent.sock").exists()
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
