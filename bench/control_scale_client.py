"""Simulated proxies for the control-plane benchmark: many ADS streams in one process (grpc.aio).

    python bench/control_scale_client.py TARGET SERVICES PROXIES FIRST COUNT

Runs proxies ``FIRST`` .. ``FIRST+COUNT-1`` of ``Mesh(SERVICES, PROXIES)``
(:mod:`control_scale_mesh`), each on its own gRPC channel (its own TCP connection, as every
Envoy has), against the ADS server at ``TARGET``. The parent drives it over stdin/stdout,
one JSON object per line:

- it prints ``{"ready": COUNT}`` once every channel is connected, then waits;
- on ``go`` it opens every stream and walks the state-of-the-world protocol as Envoy does:
  a CDS request carrying the node (Istio's node id and metadata, as
  :func:`weir.agent.bootstrap.node_metadata` makes them), then on the first clusters an LDS
  request, and an RDS request for the route names that the listeners' HTTP connection
  managers name (``rds.route_config_name``), re-sent when those names change. Every response
  is ACKed (version and nonce, the current names for RDS) right after it is decoded;
- it prints ``{"p": proxy, "v": version, "first": t, "synced": t}`` when a proxy has ACKed
  version ``v`` of every type it subscribed to, its route configurations covering every name
  it asked for: ``first`` is when the first response of ``v`` arrived, ``synced`` when the
  last ACK was written (``time.monotonic()``: one clock for every process on Linux);
- it prints ``{"reconnect": proxy, "code": ...}`` when a stream failed and is opened again;
- on ``stop`` it closes the streams and prints ``{"stopped": COUNT, "errors": [...]}``.

A stream that fails prints ``{"error": ..., "p": proxy}`` and the parent stops the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import discovery_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_scale_mesh import Mesh, Proxy

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
HCM = PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one connection per proxy, not one shared per process
    ("grpc.max_receive_message_length", -1),  # a proxy of a large mesh gets MBs of clusters
    ("grpc.max_send_message_length", -1),
]
CONNECT_TIMEOUT = 60.0
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0
RETRIED = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
"""Stream failures a proxy retries (Envoy retries any). gRPC's C-core server cancels a call that the
application has not picked up within 30 s (``grpc.server_max_unrequested_time_in_server``): an ADS
server whose event loop is busy compiling sees that when many proxies connect at once; a client
process with 500 streams sometimes fails a send with INTERNAL ("execute_batch") under that load."""


def route_names(response: Any) -> frozenset[str]:
    """The RDS names the listeners of an LDS response refer to."""
    names = set()
    for packed in response.resources:
        listener = listener_pb2.Listener.FromString(packed.value)
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM:
                    hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        names.add(hcm.rds.route_config_name)
    return frozenset(names)


@dataclass
class _Type:
    nonce: str = ""
    version: str = ""
    acked: int = 0
    """The version last ACKed (0: none)."""
    covered: frozenset[str] = frozenset()
    """RDS: the route names the last ACKed response held."""


@dataclass
class SimProxy:
    """One simulated Envoy's ADS stream."""

    index: int
    proxy: Proxy
    channel: grpc.aio.Channel
    types: dict[str, _Type] = field(default_factory=dict)
    routes: frozenset[str] = frozenset()
    """The route names the last listeners refer to."""
    requested: frozenset[str] = frozenset()
    """The route names last asked for over RDS."""
    first: dict[int, float] = field(default_factory=dict)
    reported: int = 0

    def _request(self, type_url: str, *, names: frozenset[str] = frozenset(), with_node: bool = False) -> Any:
        state = self.types.setdefault(type_url, _Type())
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=state.version,
                                             response_nonce=state.nonce, resource_names=sorted(names))
        if with_node:
            req.node.id = self.proxy.node_id
            req.node.cluster = f"{self.proxy.metadata['LABELS']['app']}.{self.proxy.namespace}"
            req.node.metadata.update(self.proxy.metadata)
        return req

    def synced_version(self) -> int:
        """The version every subscribed type has ACKed, with all wanted routes (0: not synced)."""
        needed = [CLUSTER, LISTENER] + ([ROUTE] if self.routes else [])
        if any(t not in self.types or not self.types[t].acked for t in needed):
            return 0
        if self.routes and not self.routes <= self.types[ROUTE].covered:
            return 0
        return min(self.types[t].acked for t in needed)

    async def run(self, out: Output) -> None:
        """The ADS stream; when it fails (CANCELLED, UNAVAILABLE), a new one after a jittered
        exponential back-off, as Envoy's gRPC mux does (0.5 s doubling to 30 s)."""
        backoff = BACKOFF_BASE
        while True:
            try:
                await self._stream(out)
                return  # the server ended the stream (it is stopping)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED:
                    raise
                out.event({"reconnect": self.index, "code": exc.code().name, "details": exc.details()[:200]})
            await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not a secret
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream(self, out: Output) -> None:
        call = self.channel.stream_stream(METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                          response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
        for state in self.types.values():
            state.nonce = ""  # a new stream: nonces were the old stream's
        await call.write(self._request(CLUSTER, with_node=True))
        if LISTENER in self.types:  # re-subscribe to what this proxy had, with the versions it runs
            await call.write(self._request(LISTENER))
        if ROUTE in self.types:
            await call.write(self._request(ROUTE, names=self.requested))
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            await self._on_response(call, response, out)

    async def _on_response(self, call: Any, response: Any, out: Output) -> None:
        now = time.monotonic()
        version = int(response.version_info)
        self.first.setdefault(version, now)
        type_url = response.type_url
        state = self.types.setdefault(type_url, _Type())
        state.nonce, state.version = response.nonce, response.version_info
        if type_url == LISTENER:
            self.routes = route_names(response)
        if type_url == ROUTE:
            state.covered = frozenset(route_pb2.RouteConfiguration.FromString(p.value).name
                                      for p in response.resources)
        state.acked = version
        await call.write(self._request(type_url, names=self.requested if type_url == ROUTE else frozenset()))
        if type_url == CLUSTER and LISTENER not in self.types:
            await call.write(self._request(LISTENER))
        if type_url == LISTENER and self.routes != self.requested:
            # new route names (or the first ones): (re)subscribe, answering the last RDS nonce seen
            self.requested = self.routes
            await call.write(self._request(ROUTE, names=self.routes))
        synced = self.synced_version()
        if synced > self.reported:
            self.reported = synced
            out.event({"p": self.index, "v": synced, "first": self.first.get(synced, now), "synced": time.monotonic()})
            for old in [v for v in self.first if v <= synced]:
                del self.first[old]


class Output:
    """Events to the parent, one JSON line each, flushed in batches by the event loop."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def event(self, obj: dict[str, Any]) -> None:
        self._lines.append(json.dumps(obj, separators=(",", ":")))

    def flush(self) -> None:
        if self._lines:
            sys.stdout.write("\n".join(self._lines) + "\n")
            sys.stdout.flush()
            self._lines.clear()

    async def pump(self) -> None:
        while True:
            self.flush()
            await asyncio.sleep(0.05)


async def _stdin_lines() -> asyncio.Queue[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    pending = bytearray()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        if not chunk:  # EOF: the parent is gone
            loop.remove_reader(fd)
            queue.put_nowait("")
            return
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            queue.put_nowait(line.decode() + "\n")

    loop.add_reader(fd, readable)
    return queue


async def main(target: str, services: int, proxies: int, first: int, count: int) -> int:
    mesh = Mesh(services, proxies)
    out = Output()
    sims = [SimProxy(i, mesh.proxy(i), grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
            for i in range(first, first + count)]
    await asyncio.wait_for(asyncio.gather(*(s.channel.channel_ready() for s in sims)), CONNECT_TIMEOUT)
    commands = await _stdin_lines()
    out.event({"ready": count})
    out.flush()
    if (await commands.get()).strip() != "go":
        return 1
    pump = asyncio.create_task(out.pump(), name="output")
    errors: list[str] = []

    async def one(sim: SimProxy) -> None:
        try:
            await sim.run(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream: say so, the parent ends the run
            message = f"{type(exc).__name__}: {exc}"
            errors.append(message)
            out.event({"error": message[:500], "p": sim.index})

    tasks = [asyncio.create_task(one(s), name=f"proxy-{s.index}") for s in sims]
    while (await commands.get()).strip() not in ("stop", ""):  # "" is EOF: the parent is gone
        pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(s.channel.close() for s in sims), return_exceptions=True)
    pump.cancel()
    out.event({"stopped": count, "errors": errors[:20]})
    out.flush()
    return 0


if __name__ == "__main__":
    target_, services_, proxies_, first_, count_ = sys.argv[1], *map(int, sys.argv[2:6])
    raise SystemExit(asyncio.run(main(target_, services_, proxies_, first_, count_)))
