"""The node agent's settings, and the process: it serves STATUS to the real plugin and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


PRIMARY = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
           "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}]}


def test_the_agent_installs_serves_reports_and_cleans_up(tmp_path: Path) -> None:
    plugin = Path(build(str(tmp_path / "plugin" / "weir-cni")))
    run_dir, conf_dir, bin_dir = tmp_path / "run", tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    primary = conf_dir / "10-bridge.conflist"
    primary.write_text(json.dumps(PRIMARY, indent=1))
    original = primary.read_bytes()
    not_running = _status(plugin, run_dir)
    assert not_running.returncode != 0
    assert json.loads(not_running.stdout)["code"] == 50
    health, metrics = _free_port(), _free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "weir", "node-agent", "run", "--run-dir", str(run_dir), "--pods-dir", str(tmp_path),
         "--cni-conf-dir", str(conf_dir), "--cni-bin-dir", str(bin_dir), "--listen-address", "127.0.0.1",
         "--readiness-port", str(health), "--monitoring-port", str(metrics)],
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while _status(plugin, run_dir).returncode != 0:
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "the agent did not become ready"
            time.sleep(0.1)
        assert _get(health, "/readyz") == (200, "ready\n")
        assert _get(health, "/healthz")[0] == 200
        installed = json.loads(primary.read_text())
        assert [p["type"] for p in installed["plugins"]] == ["bridge", "weir-cni"], "weir-cni chained last"
        assert (bin_dir / "weir-cni").exists()
        code, text = _get(metrics, "/metrics")
        assert code == 200
        assert "istio_cni_install_ready 1.0" in text
        assert 'istio_cni_installs_total{result="SUCCESS"}' in text
        assert "weir_cni_agent_start_to_ready_seconds" in text
        ready = _status(plugin, run_dir)
        assert ready.returncode == 0, ready.stdout
        assert ready.stdout == b""
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        assert not (run_dir / "pluginevent.sock").exists()
        assert primary.read_bytes() == original, "cleanup leaves the primary file byte-identical"
        assert not (bin_dir / "weir-cni").exists()
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
