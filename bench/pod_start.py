"""Pod start to Ready: an injected pod captured by weir-cni and proven by the istio-validation
init container, vs the same pod captured by an istio-init-style privileged init container that
loads the same rules itself; with the runtime's own floor.

    .venv/bin/python bench/pod_start.py [--quick] [--pods N] [--out bench/results] [--ref REF]

Needs root, the reference plugins in /usr/lib/cni and iptables-nft. Each sample is the wall
time from ``Runtime.run(manifest)`` (the embedded runtime: sandbox, CNI chain, shim) to the
pod's ``Ready`` condition turning True in the store, polled every 5 ms. The kinds alternate
pod by pod in rotating order; every pod is checked (init container exit 0, no restart, the
capture rules in place where there should be some), then removed, untimed. The sidecar is a
stand-in (``sleep``), so that the only difference between the kinds is where capture happens.
See bench/sections/pod_start.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import COMMIT_ENV, machine, run_at_ref, stop_on_sigterm
from pod_start_lab import (
    NAMESPACE,
    PodLab,
    add_buckets,
    add_histogram,
    floor_pod,
    injected_pod,
    istio_init_pod,
    ref_env,
)
from pod_start_profile import profile
from report import boxplots, outputs, ratio, run_main, summary, table, write_json

from weir.capture.apply import Executor
from weir.capture.pod import spec_from_pod
from weir.netns import NetNS
from weir.platform.local import PodRecord

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.005
READY_TIMEOUT = 30.0
BASE = "istio-init"


@dataclass(frozen=True)
class Kind:
    label: str
    node: str  # "weir" | "plain"
    init: str  # the init container's name
    captured: bool | None  # what the agent must record (None: no weir-cni on that node)
    rules: bool  # capture rules must be in the pod's namespace once it is Ready


KINDS = {
    "weir": Kind("weir-cni + istio-validation", "weir", "istio-validation", True, True),
    "istio-init": Kind("istio-init, no weir-cni in the chain", "plain", "istio-init", None, True),
    "istio-init-pass": Kind("istio-init, weir-cni passes it through", "weir", "istio-init", False, True),
    "floor": Kind("floor: no capture, no-op init container", "plain", "noop", None, False),
}


@dataclass(frozen=True)
class Sample:
    """One pod, seconds. ``ready`` is the figure; the rest splits it (event times from the shim)."""

    kind: str
    ready: float  # run() called -> Ready True seen in the store
    run: float  # run() called -> returned (record, netns, loopback + chain ADD, shim started)
    cni: dict[str, float]  # plugin -> its ADD exec (loopback, bridge, portmap, weir-cni)
    shim_start: float  # run() returned -> the shim started the init container
    init: float  # init container started -> the shim started the containers (its run + the shim's tick)
    to_ready: float  # containers started -> Ready seen
    agent_add: float | None  # the agent's own ADD time (its histogram's sum, before/after)
    remove: float  # Runtime.remove (untimed for the figure)


# ---- one pod ----------------------------------------------------------------------------------


def build(lab: PodLab, kind: str, name: str) -> dict[str, Any]:
    env = ref_env()
    if kind == "weir":
        return injected_pod(name, env)
    if kind == "floor":
        return floor_pod(name)
    path = lab.pod_file(name)
    doc = istio_init_pod(name, str(path), env)
    path.write_text(yaml.safe_dump(doc))
    return doc


def started(events: list[dict[str, Any]], container: str) -> float:
    for e in events:
        if e["reason"] == "Started" and e["message"] == f"Started container {container}":
            return float(e["time"])
    raise RuntimeError(f"no Started event for container {container}: {events}")


def ready(record: PodRecord) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in record.status.get("conditions", []))


def failed(record: PodRecord) -> str:
    """Why the pod will not become Ready by itself ('' while it may)."""
    for c in record.status.get("initContainerStatuses", []):
        term = c.get("state", {}).get("terminated") or (c.get("lastState") or {}).get("terminated") or {}
        if c.get("restartCount", 0) or term.get("exitCode", 0) != 0:
            return f"init container {c['name']} exited {term.get('exitCode')}"
    return f"the pod {record.phase}" if record.phase in ("Failed", "Succeeded") else ""


def verify(lab: PodLab, kind: Kind, record: PodRecord) -> None:
    """The rules are what the pod's annotations give (the same check for both captures; the
    floor pod has none), and the agent decided as expected."""
    ips = [str(p["ip"]) for p in record.status.get("podIPs", [])]
    check = Executor(state_dir=None).check(spec_from_pod(record.manifest, ips), NetNS(record.netns))
    if check.ok is not kind.rules:
        raise RuntimeError(f"pod {record.name}: capture rules {'differ from' if kind.rules else 'match'} the "
                           f"pod's spec:\n{check.describe()}")
    if kind.captured is not None:
        path = Path(lab.nodes["weir"].node.run_dir) / "state" / "attachments" / f"{record.sandbox_id}_eth0.json"
        got = json.loads(path.read_text()).get("captured")
        if got is not kind.captured:
            raise RuntimeError(f"pod {record.name}: the agent recorded captured={got}, expected {kind.captured}")


def one_pod(lab: PodLab, key: str, n: int) -> Sample:
    kind = KINDS[key]
    runtime = lab.nodes[kind.node]
    name = f"{key}-{n}"
    manifest = build(lab, key, name)
    lab.uids.add(manifest["metadata"]["uid"])
    metrics_before = add_histogram(lab.agent_metrics()) if kind.node == "weir" else None
    runtime.calls.clear()
    wall0, t0 = time.time(), time.perf_counter()
    record = runtime.run(manifest)
    t_run = time.perf_counter()
    while True:
        current = runtime.store.by_uid(record.uid)
        if current is None:
            raise RuntimeError(f"pod {name}: its record is gone\n{lab.logs(runtime, record)}")
        if ready(current):
            t_ready = time.perf_counter()
            break
        why = failed(current)
        if why or time.perf_counter() - t0 > READY_TIMEOUT:
            raise RuntimeError(f"pod {name} ({kind.label}) not Ready: {why or 'timed out'}\nstatus: "
                               f"{json.dumps(current.status)}\n{lab.logs(runtime, current)}\n"
                               f"agent:\n{lab.agent_tail()}")
        time.sleep(POLL)
    calls = {c.plugin: c.seconds for c in runtime.calls if c.command == "ADD"}
    events = runtime.store.events(record.uid)
    at = {c: t0 + started(events, c) - wall0 for c in (kind.init, "app")}
    verify(lab, kind, current)
    agent_add = None
    if metrics_before is not None:
        after = add_histogram(lab.agent_metrics())
        if after[1] != metrics_before[1] + 1:
            raise RuntimeError(f"the agent counted {after[1] - metrics_before[1]} ADDs for pod {name}, not 1")
        agent_add = after[0] - metrics_before[0]
    r0 = time.perf_counter()
    runtime.remove(NAMESPACE, name, timeout=10)
    removed = time.perf_counter() - r0
    return Sample(key, t_ready - t0, t_run - t0, calls, at[kind.init] - t_run, at["app"] - at[kind.init],
                  t_ready - at["app"], agent_add, removed)


# ---- the run ----------------------------------------------------------------------------------


def rounds(lab: PodLab, count: int, warmup: int) -> tuple[list[Sample], list[Sample]]:
    keys = list(KINDS)
    samples: list[Sample] = []
    warm: list[Sample] = []
    for i in range(warmup + count):
        order = keys[i % len(keys):] + keys[: i % len(keys)]
        for key in order:
            (warm if i < warmup else samples).append(one_pod(lab, key, i))
        if i >= warmup and ((i - warmup + 1) % 5 == 0 or i - warmup + 1 == count):
            print(f"  rounds: {i - warmup + 1}/{count}", file=sys.stderr, flush=True)
    return samples, warm


PHASES: dict[str, Callable[[Sample], float | None]] = {
    "run() to Ready": lambda s: s.ready,
    "run() itself (sandbox + CNI + shim spawn)": lambda s: s.run,
    "  CNI ADD, whole chain (loopback first)": lambda s: sum(s.cni.values()),
    "    weir-cni exec": lambda s: s.cni.get("weir-cni"),
    "      the agent's ADD (its histogram)": lambda s: s.agent_add,
    "shim start-up (to init container start)": lambda s: s.shim_start,
    "init container + shim tick": lambda s: s.init,
    "containers started to Ready seen": lambda s: s.to_ready,
}


def results(samples: list[Sample], warm: list[Sample]) -> dict[str, Any]:
    by = {k: [s for s in samples if s.kind == k] for k in KINDS}
    phases = {k: {p: summary([v for s in by[k] if (v := f(s)) is not None]) for p, f in PHASES.items()} for k in by}
    base = phases[BASE]["run() to Ready"]
    floor = phases["floor"]["run() to Ready"]["median"]
    out: dict[str, Any] = {
        "what": "wall ms from Runtime.run() to the Ready condition True in the store; kinds rotate pod by pod",
        "kinds": {k: {"label": KINDS[k].label, "node": KINDS[k].node, "summary": phases[k]["run() to Ready"],
                      "phases": phases[k], "samples": [asdict(s) for s in by[k]]} for k in by},
        "ratios_vs_istio_init": {k: {"median": ratio(phases[k]["run() to Ready"]["median"], base["median"]),
                                     "p95": ratio(phases[k]["run() to Ready"]["p95"], base["p95"])}
                                 for k in by if k != BASE},
        "over_floor_median_ms": {k: phases[k]["run() to Ready"]["median"] - floor for k in by if k != "floor"},
        "warmup": [asdict(s) for s in warm],
    }
    out["capture_cost_ratio_weir_vs_istio_init"] = ratio(out["over_floor_median_ms"]["weir"],
                                                         out["over_floor_median_ms"][BASE])
    return out


def print_tables(res: dict[str, Any]) -> None:
    kinds = res["kinds"]
    rows = []
    for k, v in kinds.items():
        s, r = v["summary"], res["ratios_vs_istio_init"].get(k, {"median": 1.0, "p95": 1.0})
        rows.append([v["label"], str(s["n"]), f"{s['median']:.0f}", f"{s['p95']:.0f}", f"{r['median']:.2f}x",
                     f"{r['p95']:.2f}x"])
    print(table(rows, ["pod start to Ready (wall ms)", "n", "median", "p95", "x istio-init (med)",
                       "x istio-init (p95)"]))
    print()
    split = [[p] + [f"{kinds[k]['phases'][p]['median']:.1f}" if kinds[k]["phases"][p].get("n") else "-"
                    for k in kinds] for p in PHASES]
    print(table(split, ["median ms, by phase", *kinds]))
    over = res["over_floor_median_ms"]
    print(f"\nover the floor (median): weir {over['weir']:.0f} ms, istio-init {over[BASE]:.0f} ms "
          f"-> capture costs {res['capture_cost_ratio_weir_vs_istio_init']:.2f}x with weir-cni")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="3 pods of each kind: a smoke run (CI)")
    p.add_argument("--pods", type=int, help="pods of each kind (default 30; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 1)")
    p.add_argument("--profile-runs", type=int, help="runs of each start-up figure in the profile (default 15; "
                   "--quick 3; 0: no profile)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument("--ref", help="measure weir as committed at this git ref (e.g. HEAD): its src/ is exported")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    if args.ref and not os.environ.get(COMMIT_ENV):
        return run_at_ref(args.ref, __file__, list(sys.argv[1:] if argv is None else argv))
    count = args.pods or (3 if args.quick else 30)
    warmup = 1 if args.warmup is None else args.warmup
    profile_runs = args.profile_runs if args.profile_runs is not None else (3 if args.quick else 15)
    if os.geteuid() != 0:
        print("pod_start: needs root (network namespaces, iptables, containers as other users)", file=sys.stderr)
        return 2
    started_at = dt.datetime.now(dt.UTC)
    info = machine()
    print(f"pod_start: {count} pods of each of {len(KINDS)} kinds (+{warmup} warm-up rounds), on {info['nproc']} x "
          f"{info['cpu']}", file=sys.stderr)
    with PodLab.open() as lab:
        samples, warm = rounds(lab, count, warmup)
        buckets = lab.agent_metrics()
        prof = profile(lab, profile_runs) if profile_runs else None
    res: dict[str, Any] = {
        "benchmark": "pod_start",
        "started": started_at.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {"pods_per_kind": count, "warmup_rounds": warmup, "quick": args.quick, "poll_ms": POLL * 1000,
                   "sidecar": "stand-in (sleep infinity, no probes)", "backend": "iptables-nft (agent auto)",
                   "profile_runs": profile_runs},
        **results(samples, warm),
        "agent_add_histogram": buckets_of(buckets),
        "profile": prof,
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out, png = args.out / f"pod_start-{stamp}.json", args.out / f"pod_start-{stamp}.png"
    res["chart"] = str(png) if chart(png, samples, f"pod start to Ready — {info['git_commit']}, {stamp}") else None
    write_json(out, res)
    print()
    print_tables(res)
    if prof:
        print()
        print(prof["text"])
    print(outputs(out, png if res["chart"] else None))
    return 0


def buckets_of(text: str) -> dict[str, Any]:
    total, count = add_histogram(text)
    return {"buckets_cumulative": add_buckets(text), "sum_seconds": total, "count": count,
            "mean_ms": total / count * 1000 if count else None}


def chart(path: Path, samples: list[Sample], title: str) -> bool:
    def series(f: Callable[[Sample], float]) -> dict[str, list[float]]:
        return {KINDS[k].label.replace(", ", ",\n", 1).replace(": ", ":\n", 1): [f(s) for s in samples if s.kind == k]
                for k in KINDS}
    return boxplots(path, title, [("run() to Ready", series(lambda s: s.ready)),
                                  ("init container + shim tick", series(lambda s: s.init)),
                                  ("CNI ADD, whole chain", series(lambda s: sum(s.cni.values())))])


if __name__ == "__main__":
    run_main(main, "pod_start", "the lab was removed")
