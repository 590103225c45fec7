"""Where the pod-start time that capture adds goes: the start-up of the processes each kind
runs, timed alone, in the pod-start lab.

Each figure is the wall time of one process, the kinds interleaved round by round:

- the interpreter doing nothing, and importing only what ``weir capture validate`` needs
  (``weir.capture.validate``, a what-if for a lean entry point) or what the shim imports;
- ``weir capture validate --help``: the ``weir`` command's own start-up, as the node's
  launcher runs it in a container;
- ``weir capture validate`` as uid 1337 in a namespace with the rules in place (what
  ``istio-validation`` runs: start-up + the probe);
- the ``istio-init`` script in a fresh namespace as root (start-up + render + iptables-restore).

And ``python -X importtime`` of ``weir capture validate --help``: the ``weir.cli`` modules by
cumulative import time (``weir.cli.main`` imports every command group up front).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pod_start_lab import ISTIO_INIT_SCRIPT, PodLab, injected_pod, istio_init_pod, sh
from report import summary, table

from weir import netns
from weir.capture.apply import Executor
from weir.capture.pod import spec_from_pod
from weir.netns import NetNS

TIMEOUT = 60.0


def _timed(argv: list[str], ns: NetNS | None = None, env: dict[str, str] | None = None) -> float:
    def go() -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=TIMEOUT, env=env)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return took

    return netns.run_in(ns, go) if ns is not None else go()


def importtime(launcher: str) -> list[tuple[str, float]]:
    """(module, cumulative ms) of the ``weir.cli.*`` command modules ``weir capture validate``
    imports, largest first, with ``weir.cli.main`` itself first."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "weir", "capture", "validate", "--help"],
                          capture_output=True, text=True, check=False, timeout=TIMEOUT)
    rows: list[tuple[int, str, float]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not cumulative.strip().isdigit():
            continue
        module = name.strip()
        rows.append((len(name) - len(name.lstrip()), module, int(cumulative) / 1000))
    main = [(m, ms) for _, m, ms in rows if m == "weir.cli.main"]
    subs = [(d, m, ms) for d, m, ms in rows if m.startswith("weir.cli.") and m != "weir.cli.main"]
    if not subs:
        return main
    top = min(d for d, _, _ in subs)
    return main + sorted(((m, ms) for d, m, ms in subs if d == top), key=lambda x: -x[1])


def profile(lab: PodLab, runs: int) -> dict[str, Any]:
    node = lab.nodes["weir"].node
    launcher = os.path.join(node.tools_dir, "weir")
    py = sys.executable
    path = f"{node.tools_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    captured = f"wsq{lab.tag}"
    scratch: list[str] = []
    manifest = lab.pod_file("profile-istio-init")
    manifest.write_text(yaml.safe_dump(istio_init_pod("profile-istio-init", str(manifest))))

    def fresh_istio_init() -> float:
        name = f"wsf{lab.tag}{len(scratch)}"
        scratch.append(name)
        sh("ip", "netns", "add", name)
        try:
            return _timed(["sh", "-c", ISTIO_INIT_SCRIPT, "istio-init", str(manifest)],
                          NetNS(f"/var/run/netns/{name}"), {**os.environ, "PATH": path})
        finally:
            sh("ip", "netns", "del", name, check=False)

    figures: dict[str, Callable[[], float]] = {
        "python -c pass": lambda: _timed([py, "-c", "pass"]),
        "python -c 'import weir.capture.validate' (lean what-if)": lambda: _timed(
            [py, "-c", "import weir.capture.validate"]),
        "python -c 'import weir.runtime.shim' (the shim's imports)": lambda: _timed(
            [py, "-c", "import weir.runtime.shim"]),
        "weir capture validate --help (the CLI's start-up)": lambda: _timed(
            [launcher, "capture", "validate", "--help"]),
        "weir capture validate, uid 1337, rules in place": lambda: _timed(
            ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", launcher, "capture", "validate",
             "--timeout", "5"], NetNS(f"/var/run/netns/{captured}")),
        "istio-init script, root, fresh netns": fresh_istio_init,
    }
    sh("ip", "netns", "add", captured)
    try:
        ns = NetNS(f"/var/run/netns/{captured}")
        sh("ip", "-n", captured, "link", "set", "lo", "up")
        Executor(state_dir=None).apply(spec_from_pod(injected_pod("profile"), None), ns)
        samples: dict[str, list[float]] = {k: [] for k in figures}
        keys = list(figures)
        for i in range(runs + 1):  # the first round warms the page cache and is dropped
            for key in keys[i % len(keys):] + keys[: i % len(keys)]:
                took = figures[key]()
                if i:
                    samples[key].append(took)
    finally:
        sh("ip", "netns", "del", captured, check=False)
    imports = importtime(launcher)
    stats = {k: summary(v) for k, v in samples.items()}
    rows = [[k, str(s["n"]), f"{s['median']:.0f}", f"{s['p95']:.0f}"] for k, s in stats.items()]
    text = table(rows, ["profile: one process (wall ms)", "n", "median", "p95"])
    text += "\n\nweir capture validate --help, -X importtime (cumulative ms): " + ", ".join(
        f"{m} {ms:.0f}" for m, ms in imports[:8])
    return {"figures": {k: {"summary": stats[k], "samples_ms": [round(x * 1000, 3) for x in samples[k]]}
                        for k in samples},
            "importtime_cli_ms": dict(imports), "text": text, "source": str(Path(__file__).name)}
