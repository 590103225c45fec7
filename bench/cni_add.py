"""CNI ADD latency: weir-cni alone (a pod without a sidecar, an injected pod) vs the reference
bridge plugin (with host-local), start-up alone (VERSION), and bursts of concurrent ADDs.

    .venv/bin/python bench/cni_add.py [--quick] [--runs N] [--out bench/results]

Needs root, the reference plugins in /usr/lib/cni and /usr/bin/python3. Everything runs in
namespaces this script creates (see lab.py); the host's namespace is never touched. Each
timed figure is the wall time of one plugin exec (perf_counter around the subprocess); kinds
are interleaved round by round, in rotating order, so that the noise of a shared machine
falls on all of them alike. Every ADD is followed by an untimed DEL and the pod namespace
is deleted, so no state accumulates. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import (
    CNI_DIR,
    CNI_VERSION,
    COMMIT_ENV,
    Exec,
    Lab,
    bench_pods,
    cni_env,
    exec_in,
    machine,
    run_at_ref,
    stop_on_sigterm,
)
from report import boxplots, outputs, ratio, run_main, summary, table, write_json

BRIDGE = os.path.join(CNI_DIR, "bridge")
INTERPRETER = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

SEQUENTIAL = {  # kind -> (label, pod name, plugin, captured?)
    "bridge": ("bridge + host-local", "plain", "bridge", None),
    "weir-pass": ("weir-cni, no sidecar (pass-through)", "plain", "weir", False),
    "weir-injected": ("weir-cni, injected (rules programmed)", "injected", "weir", True),
}
VERSIONS = {
    "bridge": "bridge VERSION",
    "weir": "weir-cni VERSION",
    "python": "python3 -IS -c pass (interpreter floor)",
}


# ---- one attachment ---------------------------------------------------------------------------


@dataclass
class Attach:
    plugin: str  # "weir" | "bridge"
    pod: str
    captured: bool | None  # what the agent must record for a weir ADD
    container_id: str
    netns_name: str
    netns_path: str
    n: int

    def argv(self, lab: Lab) -> list[str]:
        return [lab.plugin if self.plugin == "weir" else BRIDGE]

    def conf(self, lab: Lab, prev: Any = None) -> bytes:
        if self.plugin == "weir":
            return lab.weir_conf(self.netns_path, self.n)
        if prev is None:
            return lab.bridge_conf()
        return json.dumps({**json.loads(lab.bridge_conf()), "prevResult": prev}).encode()


def prepare(lab: Lab, plugin: str, pod: str, captured: bool | None) -> Attach:
    """A fresh pod namespace (untimed)."""
    name, ns = lab.new_pod_netns()
    return Attach(plugin, pod, captured, lab.container_id(plugin[0]), name, ns.path, lab.next_id())


def add(lab: Lab, a: Attach) -> Exec:
    return exec_in(lab.node, a.argv(lab), cni_env("ADD", a.container_id, a.netns_path, a.pod), a.conf(lab))


def finish(lab: Lab, a: Attach, done: Exec) -> None:
    """Check that the ADD did what it should, DEL it and drop the pod namespace (untimed)."""
    try:
        if done.returncode != 0:
            raise RuntimeError(f"{a.plugin} ADD of {a.pod} failed: {done.describe()}\nagent log:\n{lab.agent_tail()}")
        result = done.json()
        if not isinstance(result, dict) or not result.get("ips"):
            raise RuntimeError(f"{a.plugin} ADD of {a.pod} printed no result with ips: {done.describe()}")
        if a.plugin == "weir":
            record = lab.attachment_record(a.container_id)
            if record is None or record.get("captured") is not a.captured:
                raise RuntimeError(f"the agent recorded {record!r} for {a.pod}; expected captured={a.captured}")
        gone = exec_in(lab.node, a.argv(lab), cni_env("DEL", a.container_id, a.netns_path, a.pod),
                       a.conf(lab, result))
        if gone.returncode != 0:
            raise RuntimeError(f"{a.plugin} DEL of {a.pod} failed: {gone.describe()}")
    finally:
        lab.drop_pod_netns(a.netns_name)


def timed_add(lab: Lab, kind: str) -> float:
    _, pod, plugin, captured = SEQUENTIAL[kind]
    a = prepare(lab, plugin, pod, captured)
    done = add(lab, a)
    finish(lab, a, done)
    return done.seconds


# ---- the three parts --------------------------------------------------------------------------


def rotations(kinds: Sequence[T], rounds: int) -> list[list[T]]:
    """Round i runs every kind once, starting with kind i mod k: no kind is always first."""
    k = list(kinds)
    return [k[i % len(k):] + k[: i % len(k)] for i in range(rounds)]


def progress(what: str, i: int, total: int) -> None:
    if (total >= 10 and (i + 1) % 10 == 0) or i + 1 == total:
        print(f"  {what}: {i + 1}/{total}", file=sys.stderr, flush=True)


def timed_version(lab: Lab, kind: str) -> float:
    argv = {"bridge": [BRIDGE], "weir": [lab.plugin], "python": [INTERPRETER, "-IS", "-c", "pass"]}[kind]
    done = exec_in(lab.node, argv, cni_env("VERSION"), f'{{"cniVersion": "{CNI_VERSION}"}}'.encode())
    if done.returncode != 0:
        raise RuntimeError(f"{kind} VERSION failed: {done.describe()}")
    return done.seconds


Samples = dict[str, list[float]]


def sequential(lab: Lab, rounds: int, warmup: int) -> tuple[Samples, Samples, Samples]:
    """ADD samples, VERSION samples, warm-up ADD samples. Each round runs all six figures once
    (three ADDs, three VERSIONs, interleaved), in an order that rotates round by round."""
    kinds = [("add", "bridge"), ("version", "bridge"), ("add", "weir-pass"), ("version", "weir"),
             ("add", "weir-injected"), ("version", "python")]
    add: Samples = {k: [] for k in SEQUENTIAL}
    ver: Samples = {k: [] for k in VERSIONS}
    warm: Samples = {k: [] for k in SEQUENTIAL}
    for i, order in enumerate(rotations(kinds, warmup + rounds)):
        for what, kind in order:
            if what == "add":
                (warm if i < warmup else add)[kind].append(timed_add(lab, kind))
            else:
                took = timed_version(lab, kind)
                if i >= warmup:
                    ver[kind].append(took)
        if i >= warmup:
            progress("rounds", i - warmup, rounds)
    return add, ver, warm


@dataclass
class Burst:
    total: float
    adds: list[float]


def burst(lab: Lab, plugin: str, size: int) -> Burst:
    """``size`` ADDs started together on threads (a barrier releases them at once); the total
    is from the first exec's start to the last one's end."""
    pods = [(f"burst-{i:02d}", True if plugin == "weir" else None) for i in range(size)]
    attaches = [prepare(lab, plugin, pod, captured) for pod, captured in pods]
    gate = threading.Barrier(size)

    def go(a: Attach) -> Exec:
        gate.wait(timeout=60)
        return add(lab, a)

    results: list[Exec] = []
    try:
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"burst-{plugin}") as pool:
            try:
                results = list(pool.map(go, attaches))
            except BaseException:
                gate.abort()  # threads still at the barrier leave at once
                raise
    finally:
        errors: list[Exception] = []
        for i, a in enumerate(attaches):  # finish every one (and drop its netns) before raising
            try:
                if i < len(results):
                    finish(lab, a, results[i])
                else:
                    lab.drop_pod_netns(a.netns_name)
            except Exception as exc:
                errors.append(exc)
    if errors:
        raise errors[0]
    return Burst(max(r.end for r in results) - min(r.start for r in results), [r.seconds for r in results])


def bursts(lab: Lab, count: int, size: int) -> dict[str, list[Burst]]:
    out: dict[str, list[Burst]] = {"bridge": [], "weir": []}
    burst(lab, "weir", size)  # warm-up: the bridge exists, the agent's threads are started
    burst(lab, "bridge", size)
    for j in range(count):
        for plugin in (["weir", "bridge"] if j % 2 == 0 else ["bridge", "weir"]):
            out[plugin].append(burst(lab, plugin, size))
        progress("burst pairs", j, count)
    return out


# ---- report -----------------------------------------------------------------------------------


def ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 3) for v in values]


def build_results(seq: dict[str, list[float]], warm: dict[str, list[float]], ver: dict[str, list[float]],
                  bur: dict[str, list[Burst]], size: int) -> dict[str, Any]:
    s = {k: summary(v) for k, v in seq.items()}
    v = {k: summary(x) for k, x in ver.items()}
    b_adds = {k: [a for one in x for a in one.adds] for k, x in bur.items()}
    b = {k: {"total": summary([one.total for one in x]), "per_add": summary(b_adds[k])} for k, x in bur.items()}
    base, vbase = s["bridge"], v["bridge"]
    return {
        "sequential": {
            "what": "wall ms of one ADD exec in a fresh pod netns; kinds alternate, rotating order",
            "kinds": {k: {"label": SEQUENTIAL[k][0], "summary": s[k], "samples_ms": ms(seq[k])} for k in seq},
            "warmup_ms": {k: ms(x) for k, x in warm.items()},
            "ratios_vs_bridge": {k: {"median": ratio(s[k]["median"], base["median"]),
                                     "p95": ratio(s[k]["p95"], base["p95"])} for k in seq if k != "bridge"},
        },
        "version": {
            "what": "wall ms of one VERSION exec (start-up and exit, no work)",
            "kinds": {k: {"label": VERSIONS[k], "summary": v[k], "samples_ms": ms(ver[k])} for k in ver},
            "ratios_vs_bridge": {k: {"median": ratio(v[k]["median"], vbase["median"]),
                                     "p95": ratio(v[k]["p95"], vbase["p95"])} for k in ver if k != "bridge"},
        },
        "burst": {
            "what": f"{size} ADDs started together on threads; total = first start to last end",
            "size": size,
            "kinds": {k: {"label": "weir-cni, injected" if k == "weir" else "bridge + host-local",
                          "total": b[k]["total"], "per_add": b[k]["per_add"],
                          "totals_ms": ms([one.total for one in bur[k]]), "samples_ms": ms(b_adds[k])} for k in bur},
            "ratios_weir_vs_bridge": {
                "total_median": ratio(b["weir"]["total"]["median"], b["bridge"]["total"]["median"]),
                "per_add_median": ratio(b["weir"]["per_add"]["median"], b["bridge"]["per_add"]["median"]),
                "per_add_p95": ratio(b["weir"]["per_add"]["p95"], b["bridge"]["per_add"]["p95"]),
            },
        },
        "derived": {
            "weir_injected_minus_weir_version_median_ms": s["weir-injected"]["median"] - v["weir"]["median"],
            "weir_pass_minus_weir_version_median_ms": s["weir-pass"]["median"] - v["weir"]["median"],
            "weir_version_minus_interpreter_floor_median_ms": v["weir"]["median"] - v["python"]["median"],
        },
    }


def print_table(res: dict[str, Any]) -> None:
    def x(value: float) -> str:
        return f"{value:.2f}x"

    def row(label: str, summ: dict[str, float], base: dict[str, float] | None) -> list[str]:
        return [label, str(int(summ["n"])), f"{summ['median']:.1f}", f"{summ['p95']:.1f}",
                x(ratio(summ["median"], base["median"])) if base else "", x(ratio(summ["p95"], base["p95"])) if base
                else ""]

    seq, ver, bur = res["sequential"]["kinds"], res["version"]["kinds"], res["burst"]["kinds"]
    rows = [row(f"ADD  {seq[k]['label']}", seq[k]["summary"], seq["bridge"]["summary"]) for k in seq]
    rows += [row(f"VERSION  {ver[k]['label'].removesuffix(' VERSION')}", ver[k]["summary"], ver["bridge"]["summary"])
             for k in ver]
    size = res["burst"]["size"]
    for k in ("bridge", "weir"):
        rows.append(row(f"burst of {size}: total wall, {bur[k]['label']}", bur[k]["total"], bur["bridge"]["total"]))
    for k in ("bridge", "weir"):
        rows.append(row(f"burst of {size}: per ADD, {bur[k]['label']}", bur[k]["per_add"], bur["bridge"]["per_add"]))
    print(table(rows, ["figure (wall ms)", "n", "median", "p95", "x bridge (med)", "x bridge (p95)"]))
    d = res["derived"]
    print(f"\nweir-cni ADD minus its own start-up (median): "
          f"injected {d['weir_injected_minus_weir_version_median_ms']:.1f} ms, "
          f"pass-through {d['weir_pass_minus_weir_version_median_ms']:.1f} ms; "
          f"its start-up over the bare interpreter: {d['weir_version_minus_interpreter_floor_median_ms']:.1f} ms")


def chart(path: Path, seq: dict[str, list[float]], ver: dict[str, list[float]], bur: dict[str, list[Burst]],
          size: int, title: str) -> bool:
    return boxplots(path, title, [
        ("ADD, one at a time (fresh pod netns)", {SEQUENTIAL[k][0].replace(", ", "\n", 1): v for k, v in seq.items()}),
        ("VERSION (start-up only)", {VERSIONS[k].replace(" (", "\n(", 1): v for k, v in ver.items()}),
        (f"ADD, {size} at once (per ADD)", {"bridge + host-local": [a for b in bur["bridge"] for a in b.adds],
                                            "weir-cni\ninjected": [a for b in bur["weir"] for a in b.adds]}),
    ])


# ---- main -------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="5 rounds, 1 burst pair: a smoke run (CI)")
    p.add_argument("--runs", type=int,
                   help="rounds, each running the three ADDs and three VERSIONs once (default 60; --quick 5)")
    p.add_argument("--bursts", type=int, help="pairs of concurrent bursts (default 5; --quick 1)")
    p.add_argument("--burst-size", type=int, default=20, help="ADDs per burst (default 20)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 2; --quick 1)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument("--ref", help="measure weir as committed at this git ref (e.g. HEAD) instead of the working "
                   "tree: its src/ is exported to a temporary directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    if args.ref and not os.environ.get(COMMIT_ENV):
        return run_at_ref(args.ref, __file__, list(sys.argv[1:] if argv is None else argv))
    runs = args.runs or (5 if args.quick else 60)
    count = args.bursts or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if os.geteuid() != 0:
        print("cni_add: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    if not os.access(BRIDGE, os.X_OK) or not os.access(INTERPRETER, os.X_OK):
        print(f"cni_add: needs {BRIDGE} (containernetworking-plugins) and {INTERPRETER}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    info = machine()
    pods = bench_pods(args.burst_size)
    print(f"cni_add: {runs} rounds, {count} burst pairs of {args.burst_size}, on {info['nproc']} x {info['cpu']}",
          file=sys.stderr)
    with Lab.open(pods) as lab:
        seq, ver, warm = sequential(lab, runs, warmup)
        bur = bursts(lab, count, args.burst_size)
    res = {
        "benchmark": "cni_add",
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {"runs": runs, "warmup": warmup, "bursts": count, "burst_size": args.burst_size,
                   "quick": args.quick, "cni_version": CNI_VERSION, "pods_in_agent_dir": len(pods),
                   "backend": "agent default (auto: iptables-nft here)"},
        **build_results(seq, warm, ver, bur, args.burst_size),
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"cni_add-{stamp}.json"
    png = args.out / f"cni_add-{stamp}.png"
    title = f"weir-cni vs bridge CNI ADD — {info['git_commit']}, {stamp}, {info['nproc']} CPU"
    res["chart"] = str(png) if chart(png, seq, ver, bur, args.burst_size, title) else None
    write_json(out, res)
    print()
    print_table(res)
    print(outputs(out, png if res["chart"] else None))
    return 0


if __name__ == "__main__":
    run_main(main, "cni_add", "the lab was removed")
