"""``weir proxy-agent run`` as a whole process inside a pod netns the test makes.

The agent signs with a self-signed ``cacerts`` directory made here and points Envoy at an XDS
address where nothing listens, so Envoy stays un-initialised: readiness must say so. The test
checks that Envoy runs as uid 1337, the SDS socket exists, ``:15020/stats/prometheus`` carries
Envoy's stats and the agent's, the DNS proxy answers a name from the table given, and SIGTERM
ends everything within the drain duration. Client checks run inside the namespace (one
``python -c`` that reports JSON); every Envoy seen is killed by PID in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weir.control.ca import CertificateAuthority

DRAIN = 2.0  # --drain-duration: Envoy's drain on SIGTERM
STEP = 15.0  # seconds any one wait may take

CLIENT = r"""
import json, sys, time, urllib.error, urllib.request
from weir.agent.dns import query

def get(path):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open("http://127.0.0.1:15020" + path, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

deadline = time.monotonic() + float(sys.argv[1])
stats = ""
while time.monotonic() < deadline:
    try:
        code, stats = get("/stats/prometheus")
    except OSError:
        code = 0
    if code == 200 and "envoy_server_" in stats:
        break
    time.sleep(0.2)
ready = get("/healthz/ready")
answer = query("reviews.shop.svc.cluster.local", "A", ("127.0.0.1", 15053), timeout=3)
tcp = query("reviews.shop.svc.cluster.local", "A", ("127.0.0.1", 15053), tcp=True, timeout=3)
print(json.dumps({"stats": stats, "ready": ready, "rcode": int(answer.header.rcode),
                  "answers": [str(r.data) for r in answer.answers],
                  "tcp_answers": [str(r.data) for r in tcp.answers]}))
"""


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def is_our_envoy(pid: int) -> bool:
    try:
        return proc_status(pid)["Uid"].split()[0] == "1337" and Path(f"/proc/{pid}/exe").resolve().name == "envoy"
    except (OSError, KeyError):
        return False


def children(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (Envoy is spawned from one of the agent's threads,
    so the main thread's ``/proc/<pid>/task/<pid>/children`` does not list it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(proc_status(int(entry.name))["PPid"]) == pid:
                    found.append(int(entry.name))
            except (OSError, KeyError, ValueError):
                continue
    return found


def wait_for_envoy(agent: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.poll() is None:
        found = [pid for pid in children(agent.pid) if is_our_envoy(pid)]
        if found:
            return found[0]
        time.sleep(0.1)
    pytest.fail(f"no uid-1337 Envoy under the agent within {timeout} s (agent exit {agent.poll()})")


def test_proxy_agent_runs_envoy_sds_dns_status_and_stops_on_sigterm(workdir: Path, netns_name: str) -> None:
    CertificateAuthority.self_signed().save(workdir / "cacerts")
    table = workdir / "names.json"
    table.write_text(json.dumps({"hosts": {"reviews.shop.svc.cluster.local": ["10.96.0.12"]}}))
    sds = workdir / "sds" / "socket"
    log = workdir / "agent.log"
    argv = ["ip", "netns", "exec", netns_name, sys.executable, "-m", "weir", "proxy-agent", "run",
            "--pod-name", "reviews-0", "--pod-namespace", "shop", "--instance-ip", "10.88.0.9",
            "--service-account", "reviews", "--xds-address", "127.0.0.1:15010",
            "--ca-dir", str(workdir / "cacerts"), "--config-dir", str(workdir / "proxy"),
            "--sds-socket", str(sds), "--dns-table", str(table), "--drain-duration", str(DRAIN),
            "--log-format", "text"]
    envoys: set[int] = set()
    with log.open("wb") as sink:
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    try:
        envoy = wait_for_envoy(agent, STEP)
        envoys.add(envoy)
        assert proc_status(envoy)["Uid"].split() == ["1337"] * 4
        assert proc_status(envoy)["Gid"].split() == ["1337"] * 4

        client = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-c", CLIENT, str(STEP)],
                                capture_output=True, text=True, timeout=STEP + 10)
        assert client.returncode == 0, client.stderr
        seen = json.loads(client.stdout)

        assert sds.exists()
        st = sds.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid) == (1337, 1337)

        stats = seen["stats"]
        assert "envoy_server_live" in stats  # Envoy's own, from its admin
        assert "weir_agent_envoy_restarts_total 0.0" in stats  # the agent's
        assert "weir_agent_cert_expiry_timestamp_seconds" in stats  # SDS has issued a certificate
        assert stats.index("envoy_server_live") < stats.index("weir_agent_")

        status, reason = seen["ready"]
        assert status == 503  # no control plane: Envoy waits for its first configuration
        assert "INITIALIZING" in reason
        assert "XDS server" in reason

        assert seen["rcode"] == 0
        assert seen["answers"] == ["10.96.0.12"]
        assert seen["tcp_answers"] == ["10.96.0.12"]

        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(DRAIN + 8)
        took = time.monotonic() - started
        assert code == 0, log.read_text()
        assert took < DRAIN + 5, f"stopping took {took:.1f} s"
        assert not Path(f"/proc/{envoy}").exists() or not is_our_envoy(envoy)
        assert not sds.exists()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        envoys.update(pid for pid in children(agent.pid) if is_our_envoy(pid))
        for pid in envoys:
            if is_our_envoy(pid):
                os.kill(pid, signal.SIGKILL)
