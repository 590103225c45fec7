"""Where weir's CNI ADD time goes: the plugin's start-up, the agent's request, and the
agent-side steps one by one.

    .venv/bin/python bench/profile_add.py [--runs N] [--ref HEAD] [--out bench/results]

1. Start-up: ``python3 -X importtime`` on the plugin zipapp (VERSION), next to the bare
   interpreter; the top-level imports by cumulative time, and the costliest by self time.
2. The agent alone: the real agent process, called in-process through the plugin's own
   client (no plugin start-up), for a pass-through pod and an injected pod.
3. The agent's steps, in this process, through the same code and its public seams: pod
   lookup in the manifest directory, the capture decision, and ``Executor.apply`` with a
   runner that times every command it runs, with the scratch canonicalization timed cold
   (lru cache cleared) and warm.

Same lab as cni_add.py (lab.py): everything in namespaces it creates, removed on exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import (
    CNI_VERSION,
    COMMIT_ENV,
    POD_NAMESPACE,
    Lab,
    bench_pods,
    cni_env,
    exec_in,
    machine,
    run_at_ref,
    stop_on_sigterm,
)
from report import run_main, summary, table, write_json

from weir import netns
from weir.capture.apply import Backend, Executor, canonical_in_scratch
from weir.cni.events import AgentClient, Attachment, Pod
from weir.netns import NetNS
from weir.nodeagent.decide import Capture, decide
from weir.platform import DirectoryPods

ROOT = Path(__file__).resolve().parents[1]
INTERPRETER = "/usr/bin/python3"
_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def med_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


# ---- 1. start-up ------------------------------------------------------------------------------


def startup(lab: Lab, runs: int) -> dict[str, Any]:
    stdin = f'{{"cniVersion": "{CNI_VERSION}"}}'.encode()
    env = cni_env("VERSION")
    walls: dict[str, list[float]] = defaultdict(list)
    selfs: dict[str, list[int]] = defaultdict(list)
    cumulative: dict[str, list[int]] = defaultdict(list)
    top: set[str] = set()
    argv = {"interpreter floor (python3 -IS -c pass)": [INTERPRETER, "-IS", "-c", "pass"],
            "weir-cni VERSION": [lab.plugin],
            "weir-cni VERSION under -X importtime": [INTERPRETER, "-IS", "-X", "importtime", lab.plugin]}
    for i in range(runs + 1):
        for label, cmd in argv.items():
            done = exec_in(lab.node, cmd, env, stdin)
            if done.returncode != 0:
                raise RuntimeError(f"{label}: {done.describe()}")
            if i == 0:
                continue
            walls[label].append(done.seconds)
            if "importtime" in label:
                for line in done.stderr.decode().splitlines():
                    m = _IMPORT.match(line)
                    if m:
                        selfs[m[4]].append(int(m[1]))
                        cumulative[m[4]].append(int(m[2]))
                        if not m[3]:
                            top.add(m[4])
    top_level = sorted(((name, statistics.median(cumulative[name]) / 1000) for name in top), key=lambda x: -x[1])
    by_self = sorted(((name, statistics.median(v) / 1000) for name, v in selfs.items()), key=lambda x: -x[1])
    by_cum = sorted(((name, statistics.median(v) / 1000) for name, v in cumulative.items()), key=lambda x: -x[1])
    return {"wall": {k: summary(v) for k, v in walls.items()},
            "imports_total_ms": sum(ms for _, ms in top_level),
            "top_level_cumulative_ms": dict(top_level),
            "by_self_ms": dict(by_self[:15]),
            "by_cumulative_ms": dict(by_cum[:20])}


# ---- 2. the agent alone -----------------------------------------------------------------------


def agent_alone(lab: Lab, runs: int) -> dict[str, Any]:
    client = AgentClient(str(lab.run_dir / "pluginevent.sock"), timeout=10)
    out: dict[str, list[float]] = {"pass-through (no sidecar)": [], "injected": []}
    for i in range(runs + 1):
        for label, pod in (("pass-through (no sidecar)", "plain"), ("injected", "injected")):
            name, ns = lab.new_pod_netns()
            att = Attachment(lab.container_id("p"), "eth0", ns.path, Pod(POD_NAMESPACE, pod, "uid"),
                             (f"10.214.0.{i % 250 + 2}/16",))
            try:
                start = time.perf_counter()
                answer = client.add(att)
                took = time.perf_counter() - start
                if answer.get("captured") is not (pod == "injected"):
                    raise RuntimeError(f"agent answered {answer} for {pod}")
                client.delete(att)
            finally:
                lab.drop_pod_netns(name)
            if i > 0:
                out[label].append(took)
    return {k: summary(v) for k, v in out.items()}


# ---- 3. the agent's steps ---------------------------------------------------------------------


class TimingRunner:
    """The executor's runner, timing each command (the namespace entry included, as in the agent)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        start = time.perf_counter()
        done = netns.run(argv, ns, input=input, env=env)
        label = " ".join(argv[:2]) if argv[0] in ("ip", "nft") else argv[0]
        self.calls.append((label, time.perf_counter() - start))
        return done


def agent_steps(lab: Lab, runs: int) -> dict[str, Any]:
    pods = DirectoryPods(str(lab.pods_dir))
    files = sorted(p.name for p in lab.pods_dir.iterdir())

    def lookup(name: str) -> Callable[[], Any]:
        return lambda: pods.get(POD_NAMESPACE, name)

    lookups = {f"lookup '{name}' ({files.index(f'{POD_NAMESPACE}-{name}.yaml') + 1} of {len(files)} files)":
               summary(timed(lookup(name), runs)) for name in ("plain", "injected")}
    texts = [(lab.pods_dir / name).read_text() for name in files]
    c_loader = getattr(yaml, "CSafeLoader", None)
    what_if = {f"what-if: parse all {len(files)} files with yaml.safe_load (pure Python, as DirectoryPods)":
               summary(timed(lambda: [yaml.safe_load(t) for t in texts], runs))}
    if c_loader is not None:
        what_if[f"what-if: parse all {len(files)} files with yaml.CSafeLoader (libyaml)"] = \
            summary(timed(lambda: [yaml.load(t, Loader=c_loader) for t in texts], runs))  # noqa: S506 - safe loader
    injected = pods.get(POD_NAMESPACE, "injected")
    assert injected is not None
    decision = decide(injected, ips=["10.214.0.2/16"])
    assert isinstance(decision, Capture)
    spec = decision.spec

    scratch_cold: list[float] = []

    def scratch(backend: Backend, family: int, script: str) -> str:
        start = time.perf_counter()
        text = canonical_in_scratch.__wrapped__(backend, family, script)
        scratch_cold.append(time.perf_counter() - start)
        return text

    per_apply: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = {}
    applies: list[float] = []
    state = lab.tmp / "profile-capture"
    for i in range(runs + 1):
        runner = TimingRunner()
        executor = Executor(runner, state_dir=str(state), scratch=scratch)
        name, ns = lab.new_pod_netns()
        try:
            start = time.perf_counter()
            executor.apply(spec, ns)
            took = time.perf_counter() - start
            Executor(state_dir=str(state)).remove(ns)
        finally:
            lab.drop_pod_netns(name)
        if i == 0:
            continue
        applies.append(took)
        grouped: dict[str, float] = defaultdict(float)
        tally: dict[str, int] = defaultdict(int)
        for label, seconds in runner.calls:
            grouped[label] += seconds
            tally[label] += 1
        for label, seconds in grouped.items():
            per_apply[label].append(seconds)
        counts = dict(tally)
    n_scratch = len(scratch_cold) // (runs + 1)  # scratch loads per apply (apply + record)
    canonical_in_scratch(Backend.IPTABLES_NFT, 4, "*nat\nCOMMIT\n")  # fill the cache; then time hits
    warm = timed(lambda: canonical_in_scratch(Backend.IPTABLES_NFT, 4, "*nat\nCOMMIT\n"), runs)
    bare = timed(lambda: subprocess.run(["true"], check=False), runs)
    entered = timed(lambda: netns.run(["true"], lab.node), runs)
    return {
        "pod_lookup": lookups,
        "pod_lookup_what_if": what_if,
        "decide": summary(timed(lambda: decide(injected, ips=["10.214.0.2/16"]), runs)),
        "executor_apply_uncached_scratch": summary(applies),
        "commands_per_apply": {label: {"count": counts.get(label, 0), **summary(v)} for label, v in
                               sorted(per_apply.items(), key=lambda kv: -statistics.median(kv[1]))},
        "scratch_canonicalization_cold": {"per_apply": n_scratch, **summary(scratch_cold)},
        "scratch_canonicalization_warm_lru": summary(warm),
        "process_spawn": {"subprocess true": summary(bare), "netns.run true (thread + setns + spawn)":
                          summary(entered)},
    }


# ---- main -------------------------------------------------------------------------------------


def print_report(res: dict[str, Any]) -> None:
    s = res["startup"]
    rows = [[k, f"{v['median']:.1f}", f"{v['p95']:.1f}"] for k, v in s["wall"].items()]
    print(table(rows, ["start-up (wall ms)", "median", "p95"]))
    print(f"\nimports under -X importtime, top level by cumulative ms (total {s['imports_total_ms']:.1f}):")
    print(table([[k, f"{v:.1f}"] for k, v in list(s["top_level_cumulative_ms"].items())[:10]], ["module", "ms"]))
    print("\nimports by cumulative ms (a module's subtree is charged to its first importer):")
    print(table([[k, f"{v:.1f}"] for k, v in list(s["by_cumulative_ms"].items())[:15]], ["module", "ms"]))
    print("\ncostliest imports by self ms:")
    print(table([[k, f"{v:.1f}"] for k, v in list(s["by_self_ms"].items())[:10]], ["module", "ms"]))
    a = res["agent_alone"]
    print()
    print(table([[k, f"{v['median']:.1f}", f"{v['p95']:.1f}"] for k, v in a.items()],
                ["agent ADD request, no plugin (wall ms)", "median", "p95"]))
    st = res["agent_steps"]
    rows = [[k, "", f"{v['median']:.2f}", f"{v['p95']:.2f}"] for k, v in st["pod_lookup"].items()]
    rows += [[k, "", f"{v['median']:.2f}", f"{v['p95']:.2f}"] for k, v in st["pod_lookup_what_if"].items()]
    rows.append(["decide", "", f"{st['decide']['median']:.2f}", f"{st['decide']['p95']:.2f}"])
    rows.append(["Executor.apply, all (scratch uncached)", "", f"{st['executor_apply_uncached_scratch']['median']:.2f}",
                 f"{st['executor_apply_uncached_scratch']['p95']:.2f}"])
    for k, v in st["commands_per_apply"].items():
        rows.append([f"  {k}", str(v["count"]), f"{v['median']:.2f}", f"{v['p95']:.2f}"])
    cold, warm = st["scratch_canonicalization_cold"], st["scratch_canonicalization_warm_lru"]
    rows.append([f"  scratch canonicalization, cold (x{cold['per_apply']} per apply)", "", f"{cold['median']:.2f}",
                 f"{cold['p95']:.2f}"])
    rows.append(["  scratch canonicalization, warm (lru hit)", "", f"{warm['median']:.3f}", f"{warm['p95']:.3f}"])
    for k, v in st["process_spawn"].items():
        rows.append([k, "", f"{v['median']:.2f}", f"{v['p95']:.2f}"])
    print()
    print(table(rows, ["agent step (in-process, wall ms)", "count", "median", "p95"]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=30, help="repetitions of each measurement (default 30)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument("--ref", help="profile weir as committed at this git ref instead of the working tree")
    args = p.parse_args(argv)
    stop_on_sigterm()
    if args.ref and not os.environ.get(COMMIT_ENV):
        return run_at_ref(args.ref, __file__, list(sys.argv[1:] if argv is None else argv))
    if os.geteuid() != 0:
        print("profile_add: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    res: dict[str, Any] = {"benchmark": "profile_add", "started": started.isoformat(timespec="seconds"),
                           "machine": machine(), "config": {"runs": args.runs}}
    with Lab.open(bench_pods()) as lab:
        print("profile_add: start-up", file=sys.stderr, flush=True)
        res["startup"] = startup(lab, args.runs)
        print("profile_add: the agent alone", file=sys.stderr, flush=True)
        res["agent_alone"] = agent_alone(lab, args.runs)
        print("profile_add: the agent's steps", file=sys.stderr, flush=True)
        res["agent_steps"] = agent_steps(lab, args.runs)
    out = args.out / f"profile_add-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json(out, res)
    print_report(res)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    run_main(main, "profile_add", "the lab was removed")
