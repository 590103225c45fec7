"""The plugin-event wire end to end: the real asyncio server and the plugin's real client on a
UNIX socket in a temporary directory. Paths that need a pod namespace are in tests/netns."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.cni.events import AgentClient, AgentError, AgentUnavailable, Attachment, Pod
from weir.nodeagent.server import PluginEventServer
from weir.nodeagent.service import CaptureService, Settings
from weir.platform import DirectoryPods


def write_pod(directory: Path, name: str, namespace: str = "shop", **metadata: Any) -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, **metadata},
           "spec": {"containers": [{"name": "app"}]}}
    (directory / f"{namespace}-{name}.yaml").write_text(yaml.safe_dump(doc))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[PluginEventServer, AgentClient, Path]]:
    pods = tmp_path / "pods"
    pods.mkdir()
    service = CaptureService(DirectoryPods(str(pods)), str(tmp_path / "state"),
                             Settings(pod_lookup_attempts=2, pod_lookup_interval=0.01))
    server = PluginEventServer(service, str(tmp_path / "run" / "pluginevent.sock"))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield server, AgentClient(server.socket_path, timeout=5), pods
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def attachment(name: str = "web", netns: str = "/var/run/netns/none") -> Attachment:
    return Attachment("c0ffee", "eth0", netns, Pod("shop", name, "uid-1"), ("10.1.0.5/24",))


def test_status_follows_readiness(agent: tuple[PluginEventServer, AgentClient, Path]) -> None:
    server, client, _ = agent
    with pytest.raises(AgentUnavailable, match="not ready: starting"):
        client.status()
    server.ready.set()
    assert client.status() == {"ready": True}


def test_a_pod_without_sidecar_passes_through_and_is_recorded(
        agent: tuple[PluginEventServer, AgentClient, Path], tmp_path: Path) -> None:
    _, client, pods = agent
    write_pod(pods, "web")
    answer = client.add(attachment())
    assert answer == {"captured": False, "reason": "no istio-proxy container"}
    assert (tmp_path / "state" / "attachments" / "c0ffee_eth0.json").exists()
    assert client.delete(attachment()) == {"removed": False}
    assert not (tmp_path / "state" / "attachments" / "c0ffee_eth0.json").exists()
    assert client.delete(attachment()) == {"removed": False}, "DEL twice is fine"


def test_an_unknown_pod_is_try_again_later(agent: tuple[PluginEventServer, AgentClient, Path]) -> None:
    _, client, _ = agent
    with pytest.raises(AgentError) as err:
        client.add(attachment("ghost"))
    assert err.value.code == 11
    assert "shop/ghost" in err.value.msg


def test_a_bad_annotation_is_code_7_naming_it(agent: tuple[PluginEventServer, AgentClient, Path]) -> None:
    _, client, pods = agent
    write_pod(pods, "web", annotations={"sidecar.istio.io/status": "{}",
                                        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"})
    doc = yaml.safe_load((pods / "shop-web.yaml").read_text())
    doc["spec"]["containers"].append({"name": "istio-proxy"})
    (pods / "shop-web.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(AgentError) as err:
        client.add(attachment())
    assert err.value.code == 7
    assert "excludeOutboundIPRanges" in err.value.msg
    assert "10.0.0.0/33" in err.value.msg


def test_gc_forgets_attachments_that_are_not_valid(agent: tuple[PluginEventServer, AgentClient, Path]) -> None:
    _, client, pods = agent
    write_pod(pods, "web")
    client.add(attachment())
    client.add(Attachment("beef", "eth0", "/var/run/netns/none", Pod("shop", "web")))
    assert client.gc([{"containerID": "beef", "ifname": "eth0"}]) == {"removed": ["c0ffee_eth0"]}
    assert client.gc([]) == {"removed": ["beef_eth0"]}


def test_plugin_logs_reach_the_agent_log(agent: tuple[PluginEventServer, AgentClient, Path],
                                        caplog: pytest.LogCaptureFixture) -> None:
    _, client, _ = agent
    with caplog.at_level("INFO", logger="weir.cni-plugin"):
        client.log([{"level": "warn", "msg": "hello from the plugin", "pod": "shop/web"}])
    assert any("hello from the plugin" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_malformed_requests_get_errors_not_dropped_connections(
        agent: tuple[PluginEventServer, AgentClient, Path]) -> None:
    server, client, _ = agent
    with pytest.raises(AgentError) as err:
        client.call("POST", "/v1/add", {"pod": "nope"})
    assert err.value.code == 6
    with pytest.raises(AgentError, match="no such endpoint"):
        client.call("GET", "/v1/nothing")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(server.socket_path)
        raw.sendall(b"garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


def test_no_agent_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable):
        AgentClient(str(tmp_path / "missing.sock"), timeout=1).status()
