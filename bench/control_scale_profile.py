"""Where the control plane's push time goes: the per-proxy work on one snapshot, in-process,
and (optionally) py-spy on the live control plane during a push.

:func:`profile` builds the benchmark's mesh the way ``weir control run`` does (the store's
JSON through :func:`weir.api.load.load_documents`, :meth:`Snapshot.of`, :func:`build_registry`)
and then, for a sample of proxies spread over the mesh, times each step the ADS server runs
per stream and version (:meth:`weir.control.server.ControlPlane._resources_for` and
:func:`weir.control.xds_convert.pack`): :func:`proxy_info`, :func:`compile_proxy`,
:func:`name_table`, ``pack`` (``json_format.ParseDict`` of every resource into its message),
and serializing the responses. It also runs those steps under cProfile (top functions), counts
how many of the sampled proxies' resources are distinct (byte-identical JSON is one), and
times a what-if: a content-addressed cache of packed resources (canonical JSON -> ``Any``,
one per config version), which is what a cached push would cost per proxy, and a second one
that also compiles and packs the outbound half of the config (which reads only the proxy's
namespace) once per namespace; it checks that this gives exactly :func:`compile_proxy`'s
output and the same packed messages.

:func:`py_spy_record` samples a running process with py-spy (``record --format raw``) until
``finish()``, and summarises the stacks: the share of samples inside the functions above.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import pstats
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

from control_scale_mesh import Mesh
from envoy.service.discovery.v3 import discovery_pb2

from weir.api.load import load_documents
from weir.control import envoy_shapes as es
from weir.control.compile import EnvoyResources, Options, ProxyInfo, _Compiler, compile_proxy
from weir.control.nds import name_table
from weir.control.registry import Registry, Snapshot, build_registry
from weir.control.server import proxy_info
from weir.control.xds_convert import CLUSTER, LISTENER, NAME_TABLE, ROUTE, Packed, pack, to_any

T = TypeVar("T")
JSON = dict[str, Any]
WATCH = {  # label -> function names (as py-spy shows them) that mark it in a stack
    "compile_proxy": {"compile_proxy"},
    "pack (json_format.ParseDict into messages)": {"pack"},
    "name_table": {"name_table"},
    "store reload + registry (ControlPlane._load)": {"ControlPlane._load", "_load"},
    "ADS send (AdsServer._send: resources + response)": {"AdsServer._send", "_send"},
}


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _build(mesh: Mesh) -> tuple[Snapshot, Registry, float, float]:
    text = json.dumps(mesh.manifests())
    resources, load_s = _timed(lambda: load_documents(text, "bench mesh", json.loads))
    start = time.perf_counter()
    snapshot = Snapshot.of(resources)
    registry = build_registry(snapshot)
    return snapshot, registry, load_s, time.perf_counter() - start


def _per_proxy(snapshot: Snapshot, registry: Registry, metadata: dict[str, Any]) -> dict[str, Any]:
    """One proxy's push, step by step, as the ADS server does it."""
    info, info_s = _timed(lambda: proxy_info(metadata))
    compiled, compile_s = _timed(lambda: compile_proxy(snapshot, registry, info))
    table, table_s = _timed(lambda: name_table(registry))
    packed, pack_s = _timed(lambda: pack(compiled))
    _, nds_s = _timed(lambda: to_any(NAME_TABLE, table))

    def serialize() -> int:
        return sum(len(discovery_pb2.DiscoveryResponse(version_info="2", type_url=url, nonce="1-1",
                                                       resources=[p.resource for p in packed[url]])
                       .SerializeToString()) for url in (CLUSTER, LISTENER, ROUTE))

    size, ser_s = _timed(serialize)
    return {"proxy_info_s": info_s, "compile_s": compile_s, "name_table_s": table_s, "pack_s": pack_s,
            "pack_nds_s": nds_s, "serialize_s": ser_s, "bytes": size, "resources": compiled}


def _canonical(resource: dict[str, Any]) -> str:
    return json.dumps(resource, sort_keys=True, separators=(",", ":"))


@dataclass
class PackCache:
    """The what-if: packed resources by (type, canonical JSON), kept for one config version."""

    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        self._by_key: dict[tuple[str, str], Packed] = {}

    def pack(self, resources: EnvoyResources) -> dict[str, tuple[Packed, ...]]:
        out = {}
        for url, items in ((CLUSTER, resources.clusters), (LISTENER, resources.listeners),
                           (ROUTE, resources.routes)):
            packed = []
            for r in items:
                key = (url, _canonical(r))
                found = self._by_key.get(key)
                if found is None:
                    self.misses += 1
                    found = self._by_key[key] = Packed(str(r["name"]), to_any(url, r))
                else:
                    self.hits += 1
                packed.append(found)
            out[url] = tuple(packed)
        return out


Half = tuple[list[JSON], list[JSON], tuple[JSON, ...], bool]


def _halves(snapshot: Snapshot, registry: Registry, info: ProxyInfo, outbound: dict[str, Half]) -> tuple[Half, Any]:
    """What-if: the outbound half (listeners, clusters, routes), which reads only the proxy's
    namespace, compiled once per namespace and config version; the inbound half per proxy."""
    if info.namespace not in outbound:
        c = _Compiler(snapshot, registry, info, Options())
        listeners, clusters = c.outbound_listeners(), c.outbound_clusters()
        outbound[info.namespace] = (listeners, clusters, tuple(c.routes), c.uses_tls)
    return outbound[info.namespace], _Compiler(snapshot, registry, info, Options())


def _split_compile(snapshot: Snapshot, registry: Registry, info: ProxyInfo,
                   outbound: dict[str, Half]) -> EnvoyResources:
    """The two halves assembled exactly as :func:`compile_proxy` does (the profile checks it is equal)."""
    (listeners, clusters, routes, tls), c = _halves(snapshot, registry, info, outbound)
    own_clusters = [*c.inbound_clusters(), *c.fixed_clusters()]
    return EnvoyResources(listeners=(c.virtual_outbound(), *listeners, c.virtual_inbound()),
                          clusters=tuple(sorted([*clusters, *own_clusters], key=lambda x: x["name"])),
                          routes=routes, secrets=(es.SECRET_ROOT, es.SECRET_CERT) if tls or c.uses_tls else ())


def _split_packed(snapshot: Snapshot, registry: Registry, info: ProxyInfo, outbound: dict[str, Half],
                  packed_outbound: dict[str, dict[str, tuple[Packed, ...]]], cache: PackCache,
                  ) -> dict[str, tuple[Packed, ...]]:
    """The what-if's push for one proxy: the outbound half packed once per namespace (through
    ``cache``, so namespaces share identical resources), the proxy's own few resources packed
    per proxy, merged in :func:`compile_proxy`'s order."""
    (listeners, clusters, routes, _), c = _halves(snapshot, registry, info, outbound)
    if info.namespace not in packed_outbound:
        packed_outbound[info.namespace] = cache.pack(EnvoyResources(listeners=tuple(listeners),
                                                                    clusters=tuple(clusters), routes=routes,
                                                                    secrets=()))
    shared = packed_outbound[info.namespace]
    own = cache.pack(EnvoyResources(listeners=(c.virtual_outbound(), c.virtual_inbound()),
                                    clusters=(*c.inbound_clusters(), *c.fixed_clusters()), routes=(), secrets=()))
    first, inbound = own[LISTENER]
    return {CLUSTER: tuple(sorted([*shared[CLUSTER], *own[CLUSTER]], key=lambda p: p.name)),
            LISTENER: (first, *shared[LISTENER], inbound), ROUTE: shared[ROUTE]}


def _cached_push(cache: PackCache, snapshot: Snapshot, registry: Registry,
                 info: ProxyInfo) -> dict[str, tuple[Packed, ...]]:
    return cache.pack(compile_proxy(snapshot, registry, info))


def _top(stats: pstats.Stats, key: str, n: int) -> list[dict[str, Any]]:
    stats.sort_stats(key)
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for func in stats.fcn_list[:n]:  # type: ignore[attr-defined]
        _, nc, tt, ct, _ = raw[func]
        file, line, name = func
        rows.append({"function": f"{name} ({Path(file).name}:{line})", "calls": nc, "tottime_s": round(tt, 4),
                     "cumtime_s": round(ct, 4)})
    return rows


def profile(services: int, proxies: int, sample: int = 20) -> dict[str, Any]:
    mesh = Mesh(services, proxies)
    snapshot, registry, load_s, reg_s = _build(mesh)
    picks = sorted({round(i * (proxies - 1) / max(sample - 1, 1)) for i in range(sample)})
    metas = [mesh.proxy(p).metadata for p in picks]
    steps = [_per_proxy(snapshot, registry, m) for m in metas]
    distinct: set[str] = set()
    total = 0
    for step in steps:
        res: EnvoyResources = step["resources"]
        for r in (*res.clusters, *res.listeners, *res.routes):
            distinct.add(_canonical(r))
            total += 1
    cache = PackCache()
    cached = []
    for m in metas:  # the what-if: compile, then pack through the cache (hits after the first proxy)
        _, took = _timed(partial(_cached_push, cache, snapshot, registry, proxy_info(m)))
        cached.append(took)
    outbound: dict[str, Half] = {}
    packed_outbound: dict[str, dict[str, tuple[Packed, ...]]] = {}
    split_cache = PackCache()
    per_namespace = []
    for m in metas:  # the per-namespace half first (timed: what each namespace costs once a version)
        if m["NAMESPACE"] not in outbound:
            _, took = _timed(partial(_split_packed, snapshot, registry, proxy_info(m), outbound, packed_outbound,
                                     split_cache))
            per_namespace.append(took)
    split = []
    same = True
    for m in metas:
        info = proxy_info(m)
        got, took = _timed(partial(_split_packed, snapshot, registry, info, outbound, packed_outbound, split_cache))
        split.append(took)
        expected = compile_proxy(snapshot, registry, info)
        same = (same and _split_compile(snapshot, registry, info, outbound).to_json() == expected.to_json()
                and {url: [p.resource for p in got[url]] for url in got} == {url: [p.resource for p in items]
                                                                            for url, items in pack(expected).items()})
    namespaces = len(mesh.namespaces)
    prof = cProfile.Profile()
    prof.enable()
    for m in metas[:5]:
        pack(replace(compile_proxy(snapshot, registry, proxy_info(m)), name_table=name_table(registry)))
    prof.disable()
    stats = pstats.Stats(prof)

    def med(key: str) -> float:
        return round(float(median(s[key] for s in steps)), 5)

    per_proxy = sum(med(k) for k in ("proxy_info_s", "compile_s", "name_table_s", "pack_s", "pack_nds_s",
                                     "serialize_s"))
    once = med("name_table_s") + med("pack_nds_s")  # the name table is the same for every proxy: once a version
    return {
        "services": services, "proxies": proxies, "sampled_proxies": len(picks),
        "what": "median seconds per proxy of each step the ADS server runs per stream and config version; "
                "the what-ifs count the name table once per version (it is the same for every proxy)",
        "snapshot": {"load_documents_s": round(load_s, 4), "snapshot_and_registry_s": round(reg_s, 4),
                     "objects": len(mesh.manifests())},
        "per_proxy_s": {"proxy_info": med("proxy_info_s"), "compile_proxy": med("compile_s"),
                        "name_table": med("name_table_s"), "pack CDS+LDS+RDS (ParseDict)": med("pack_s"),
                        "pack NDS name table (ParseDict)": med("pack_nds_s"),
                        "serialize responses": med("serialize_s"), "total": round(per_proxy, 5)},
        "bytes_per_proxy": int(median(s["bytes"] for s in steps)),
        "resources_per_proxy": total // max(len(steps), 1),
        "distinct_resources_in_sample": len(distinct), "resources_in_sample": total,
        "one_push_cpu_s_estimate": round(per_proxy * proxies, 1),
        "what_if_pack_cache": {
            "what": "compile_proxy, then pack through a content-addressed cache (type, canonical JSON) -> Any",
            "first_proxy_s": round(cached[0], 4), "median_s": round(median(cached[1:] or cached), 4),
            "hits": cache.hits, "misses": cache.misses,
            "one_push_cpu_s_estimate": round(once + cached[0] + median(cached[1:] or cached) * (proxies - 1), 1),
        },
        "what_if_namespace_and_pack_cache": {
            "what": "the outbound half compiled and packed once per namespace and version (it reads only the "
                    "proxy's namespace; identical resources shared through the content-addressed cache), the "
                    "proxy's own listeners and clusters per proxy",
            "identical_to_compile_proxy": same,
            "per_namespace_s": round(median(per_namespace), 4), "namespaces": namespaces,
            "per_proxy_s": round(median(split), 5),
            "one_push_cpu_s_estimate": round(once + max(per_namespace) + median(per_namespace) * (namespaces - 1)
                                             + median(split) * proxies, 1),
        },
        "cprofile_top_tottime": _top(stats, "tottime", 12),
        "cprofile_top_cumtime": _top(stats, "cumulative", 12),
    }


@dataclass
class Spy:
    proc: subprocess.Popen[bytes]
    path: Path

    def finish(self) -> dict[str, Any]:
        """Stop sampling; the share of samples (all threads, idle excluded) in each watched function."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.path.exists():
            return {"error": err.decode(errors="replace").strip()[-500:]}
        total = 0
        inside = dict.fromkeys(WATCH, 0)
        leaves: dict[str, int] = {}
        for line in self.path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            names = {f.split(" (", 1)[0] for f in frames}
            for label, marks in WATCH.items():
                if names & marks:
                    inside[label] += count
            leaf = frames[-1]
            leaves[leaf] = leaves.get(leaf, 0) + count
        top = sorted(leaves.items(), key=lambda kv: -kv[1])[:10]
        return {"samples": total, "share_inside": {k: round(v / total, 3) if total else 0 for k, v in inside.items()},
                "top_leaf_frames": [{"frame": f, "share": round(c / total, 3)} for f, c in top]}


def py_spy_record(binary: str, pid: int, path: Path) -> Spy:
    argv = [binary, "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--output", str(path),
            "--nonblocking"]
    return Spy(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
