"""The executor: the only code that applies, checks and removes capture rules.

It works inside a pod's network namespace given by path and refuses the host's own. Each
address family is applied with one ``iptables-restore`` (or, for native nftables, both
families with one ``nft -f`` transaction); IPv4 and IPv6 together are a transaction: if
anything fails after IPv4 went in, every table weir touched is restored from the snapshot
taken before, so nothing of weir's remains and nobody else's rules change.

Applying equal rules changes nothing. Applying different rules replaces weir's own chains
(and weir's rules in the built-in chains) and leaves everything else alone. iptables-nft makes
an nft table (``ip nat`` ...) the first time a rule goes into it and never drops it; the tables
weir's applies made are kept in the record and deleted again once nothing is left in them. To compare
with what the kernel reports, the spec's rules are first loaded into a scratch namespace
and read back, so that both sides are in the kernel's own canonical text.

Back-ends: iptables-nft, iptables-legacy and native nftables. ``auto`` picks as Istio does:
legacy when legacy iptables already holds rules in that namespace, else nft;
``FORCE_IPTABLES_BINARY=legacy|nft`` overrides.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from weir import netns
from weir.capture import iptables, nftables
from weir.capture import state as st
from weir.capture.spec import CaptureSpec, InterceptionMode
from weir.netns import NetNS

DEFAULT_STATE_DIR = "/run/weir/capture"


class Backend(enum.Enum):
    IPTABLES_NFT = "iptables-nft"
    IPTABLES_LEGACY = "iptables-legacy"
    NFTABLES = "nftables"

    @property
    def is_iptables(self) -> bool:
        return self is not Backend.NFTABLES


class CaptureError(RuntimeError):
    """Rules could not be applied, checked or removed. Nothing half-applied remains."""


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]: ...


def _default_runner(argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
                    env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return netns.run(argv, ns, input=input, env=env)


@dataclass(frozen=True)
class CheckResult:
    backend: Backend
    drifts: tuple[st.Drift, ...]

    @property
    def ok(self) -> bool:
        return not self.drifts

    def describe(self) -> str:
        if self.ok:
            return f"capture rules match the spec ({self.backend.value})"
        return "\n".join(d.describe() for d in self.drifts)


@dataclass(frozen=True)
class ApplyResult:
    backend: Backend
    changed: bool
    families: tuple[int, ...] = field(default=())


def _tool(backend: Backend, family: int, verb: str) -> list[str]:
    base = "iptables" if family == 4 else "ip6tables"
    if backend is Backend.IPTABLES_LEGACY:
        return [f"{base}-legacy-{verb}"] + (["-w", "30"] if verb == "restore" else [])
    return [f"{base}-nft-{verb}"]


class Executor:
    """Applies, checks and removes a spec's rules in a namespace. Fakes come in through
    ``runner`` (commands) and ``scratch`` (canonical text); records live in ``state_dir``."""

    def __init__(self, runner: Runner | None = None, *, state_dir: str | None = DEFAULT_STATE_DIR,
                 scratch: Callable[[Backend, int, str], str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._run = runner or _default_runner
        self._state_dir = state_dir
        self._scratch = scratch or canonical_in_scratch
        self._environ = os.environ if environ is None else environ

    # ---- public API ---------------------------------------------------------------------------

    def detect_backend(self, ns: NetNS) -> Backend:
        """Pick the iptables back-end as Istio does (never native nftables)."""
        forced = self._environ.get("FORCE_IPTABLES_BINARY", "").strip()
        if forced:
            if forced not in ("legacy", "nft"):
                raise CaptureError(f"FORCE_IPTABLES_BINARY: invalid value {forced!r}: expected legacy or nft")
            return Backend.IPTABLES_LEGACY if forced == "legacy" else Backend.IPTABLES_NFT
        for family in (4, 6):
            out = self._run(_tool(Backend.IPTABLES_LEGACY, family, "save"), ns)
            if out.returncode == 0 and any(line.startswith("-A ") for line in out.stdout.splitlines()):
                return Backend.IPTABLES_LEGACY
        probe = self._run(_tool(Backend.IPTABLES_NFT, 4, "save"), ns)
        return Backend.IPTABLES_NFT if probe.returncode == 0 else Backend.IPTABLES_LEGACY

    def apply(self, spec: CaptureSpec, ns: NetNS, backend: Backend | None = None) -> ApplyResult:
        self._guard(ns)
        with self._locked(ns):
            backend = backend or self.detect_backend(ns)
            created: dict[int, list[str]] = {}
            if backend is Backend.NFTABLES:
                changed = self._apply_nft(spec, ns)
            else:
                changed, created = self._apply_iptables(spec, ns, backend)
            self._write_record(ns, backend, spec, created)
            return ApplyResult(backend, changed, (4, 6) if spec.ipv6 else (4,))

    def check(self, spec: CaptureSpec, ns: NetNS, backend: Backend | None = None) -> CheckResult:
        self._guard(ns)
        backend = backend or self.detect_backend(ns)
        drifts: list[st.Drift] = []
        if backend is Backend.NFTABLES:
            drifts += self._nft_drift(spec, ns)
        else:
            for family in (4, 6):
                current, desired = self._iptables_states(spec, ns, backend, family)
                drifts += st.compare(f"ipv{family}", desired[1], current[1])
        drifts += _Routing(self._run, ns).drift(routing_items(spec))
        return CheckResult(backend, tuple(drifts))

    def remove(self, ns: NetNS, spec: CaptureSpec | None = None, backend: Backend | None = None) -> bool:
        """Take away what weir added; returns whether anything was there."""
        self._guard(ns)
        with self._locked(ns):
            backend = backend or self.detect_backend(ns)
            empty = CaptureSpec(interception_mode=InterceptionMode.NONE)
            removed = False
            if backend is Backend.NFTABLES:
                removed = self._apply_nft(empty, ns)
            else:
                known = spec or empty
                for family in (4, 6):
                    (save, current), _ = self._iptables_states(known, ns, backend, family)
                    if current:
                        self._restore(backend, family, ns, st.replace_script(current, "", {}), save, list(current))
                        removed = True
                    self._prune_tables(backend, family, ns, self._created(ns, backend, family))
            items = routing_items(spec) + self._recorded_routing(ns)
            removed = _Routing(self._run, ns).remove(items) or removed
            self._drop_record(ns)
            return removed

    # ---- iptables -----------------------------------------------------------------------------

    def _iptables_states(self, spec: CaptureSpec, ns: NetNS, backend: Backend,
                         family: int) -> tuple[tuple[str, st.Owned], tuple[str, st.Owned]]:
        """((save text, weir's current rules), (desired restore text, desired rules))."""
        out = self._run(_tool(backend, family, "save"), ns)
        if out.returncode != 0:
            raise CaptureError(f"{_tool(backend, family, 'save')[0]} failed: {out.stderr.strip()}")
        desired_text = iptables.build(spec).restore(family)
        desired = st.parse_save(self._scratch(backend, family, desired_text)) if desired_text else {}
        desired_owned = st.all_rules(desired)
        known = _merge(st.builtin_part(desired_owned), self._record(ns, backend, family))
        current = st.owned_rules(st.parse_save(out.stdout), known)
        return (out.stdout, current), (desired_text, desired_owned)

    def _apply_iptables(self, spec: CaptureSpec, ns: NetNS, backend: Backend) -> tuple[bool, dict[int, list[str]]]:
        """Apply both families; returns whether anything changed and, per family, the tables
        that weir's applies created (kept in the record so that remove can delete them)."""
        done: list[tuple[int, str, list[str]]] = []  # (family, snapshot, tables) for rollback
        changed = False
        created: dict[int, list[str]] = {}
        try:
            for family in (4, 6):
                (save, current), (text, desired) = self._iptables_states(spec, ns, backend, family)
                ours = set(self._created(ns, backend, family))
                if current != desired:
                    tables = sorted(set(current) | set(desired))
                    self._restore(backend, family, ns, st.replace_script(current, text, desired), save, tables)
                    done.append((family, save, tables))
                    changed = True
                    ours |= set(desired) - set(st.parse_save(save))
                unneeded = ours - set(desired)
                kept = self._prune_tables(backend, family, ns, unneeded) if unneeded else []
                created[family] = sorted((ours - unneeded) | set(kept))
            self._ensure_routing(spec, ns)
        except Exception:
            for family, save, tables in reversed(done):
                self._rollback(backend, family, ns, save, tables)
            raise
        return changed, created

    def _restore(self, backend: Backend, family: int, ns: NetNS, script: str, snapshot: str,
                 tables: list[str]) -> None:
        out = self._run([*_tool(backend, family, "restore"), "--noflush"], ns, input=script)
        if out.returncode != 0:
            self._rollback(backend, family, ns, snapshot, tables)
            raise CaptureError(f"{_tool(backend, family, 'restore')[0]} (IPv{family}) refused the rules: "
                               f"{out.stderr.strip() or out.stdout.strip()}")

    def _rollback(self, backend: Backend, family: int, ns: NetNS, snapshot: str, tables: list[str]) -> None:
        # Restore only the tables the failed attempt changed (restore commits table by table),
        # so that a table it left alone is left exactly as it is.
        now = self._run(_tool(backend, family, "save"), ns)
        if now.returncode == 0:
            tables = [t for t in tables if not st.same_tables(now.stdout, snapshot, [t])]
            if not tables:
                return
        text = st.restore_only(snapshot, tables)
        # A table absent from the snapshot did not exist before: flush what we put there.
        missing = [t for t in tables if f"*{t}" not in text]
        text += "".join(f"*{t}\nCOMMIT\n" for t in missing)
        out = self._run(_tool(backend, family, "restore"), ns, input=text)
        if out.returncode != 0:
            raise CaptureError(f"rollback of IPv{family} failed, the namespace needs attention: {out.stderr.strip()}")

    def _prune_tables(self, backend: Backend, family: int, ns: NetNS, tables: Iterable[str]) -> list[str]:
        """Delete the iptables-nft tables among ``tables`` (ones weir's apply created) that hold
        nothing but empty built-in chains; returns the tables that remain.

        iptables-nft creates nft tables (``ip nat`` ...) with their base chains on first use and
        never deletes them. Legacy iptables tables cannot be deleted at all, so for legacy this
        does nothing. Without the ``nft`` tool the tables stay (they are empty and harmless).
        """
        names = sorted(tables)
        if backend is not Backend.IPTABLES_NFT:
            return names
        kept = []
        nft_family = "ip" if family == 4 else "ip6"
        for table in names:
            try:
                listed = self._run(["nft", "list", "table", nft_family, table], ns)
                if listed.returncode != 0 or not st.nft_table_is_bare(listed.stdout):
                    kept.append(table)
                    continue
                out = self._run(["nft", "delete", "table", nft_family, table], ns)
            except FileNotFoundError:
                return names
            if out.returncode != 0:
                raise CaptureError(f"nft delete table {nft_family} {table} failed: {out.stderr.strip()}")
        return kept

    # ---- nftables -----------------------------------------------------------------------------

    def _nft_tables(self, ns: NetNS) -> dict[str, dict[str, list[str]]]:
        out = self._run(["nft", "-s", "list", "tables", "inet"], ns)
        if out.returncode != 0:
            raise CaptureError(f"nft list tables failed: {out.stderr.strip()}")
        present = {line.split()[-1] for line in out.stdout.splitlines() if line.startswith("table inet ")}
        tables = {}
        for table in nftables.TABLES:
            if table in present:
                listed = self._run(["nft", "-s", "list", "table", "inet", table], ns)
                if listed.returncode != 0:
                    raise CaptureError(f"nft list table {table} failed: {listed.stderr.strip()}")
                tables[table] = st.parse_nft_table(listed.stdout)
        return tables

    def _nft_desired(self, spec: CaptureSpec) -> dict[str, dict[str, list[str]]]:
        script = nftables.render(spec)
        if not script:
            return {}
        listed = self._scratch(Backend.NFTABLES, 0, script)
        blocks = _split_nft_tables(listed)
        return {t: st.parse_nft_table(text) for t, text in blocks.items()}

    def _nft_drift(self, spec: CaptureSpec, ns: NetNS) -> list[st.Drift]:
        current, desired = self._nft_tables(ns), self._nft_desired(spec)
        return [d for t in nftables.TABLES for d in st.compare_nft(t, desired.get(t), current.get(t))]

    def _apply_nft(self, spec: CaptureSpec, ns: NetNS) -> bool:
        current = self._nft_tables(ns)
        desired = self._nft_desired(spec)
        if current == desired:
            self._ensure_routing(spec, ns)
            return False
        lines: list[str] = []
        for table in current:
            lines += [f"add table inet {table}", f"delete table inet {table}"]
        lines.append(nftables.render(spec))
        out = self._run(["nft", "-f", "-"], ns, input="\n".join(lines))
        if out.returncode != 0:
            raise CaptureError(f"nft refused the rules (nothing was changed): {out.stderr.strip()}")
        try:
            self._ensure_routing(spec, ns)
        except Exception:
            self._restore_nft(ns, current)
            raise
        return True

    def _restore_nft(self, ns: NetNS, before: Mapping[str, Mapping[str, list[str]]]) -> None:
        lines = []
        for table in nftables.TABLES:
            lines += [f"add table inet {table}", f"delete table inet {table}"]
        for table, chains in before.items():
            lines.append(f"table inet {table} {{")
            for chain, body in chains.items():
                lines += [f"chain {chain} {{", *body, "}"]
            lines.append("}")
        out = self._run(["nft", "-f", "-"], ns, input="\n".join(lines) + "\n")
        if out.returncode != 0:
            raise CaptureError(f"rollback of nftables failed, the namespace needs attention: {out.stderr.strip()}")

    # ---- safety, locking, records ---------------------------------------------------------------

    def _guard(self, ns: NetNS) -> None:
        if not ns.exists():
            raise CaptureError(f"network namespace {ns.path} does not exist")
        if ns.is_host():
            raise CaptureError(f"{ns.path} is the host's own network namespace; weir only programs pod namespaces")

    @contextlib.contextmanager
    def _locked(self, ns: NetNS) -> Iterator[None]:
        if self._state_dir is None:
            yield
            return
        os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
        dev, ino = ns.identity()
        with open(os.path.join(self._state_dir, f"{dev}-{ino}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _record_path(self, ns: NetNS) -> str | None:
        if self._state_dir is None:
            return None
        dev, ino = ns.identity()
        return os.path.join(self._state_dir, f"{dev}-{ino}.json")

    def _load_record(self, ns: NetNS) -> dict[str, Any]:
        path = self._record_path(ns)
        if path is None or not os.path.exists(path):
            return {}
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _record(self, ns: NetNS, backend: Backend, family: int) -> dict[str, dict[str, list[str]]]:
        data = self._load_record(ns)
        if data.get("backend") != backend.value:
            return {}
        return dict(data.get("builtin", {}).get(str(family), {}))

    def _created(self, ns: NetNS, backend: Backend, family: int) -> list[str]:
        """Tables that weir's applies created in ``ns`` (from the record)."""
        data = self._load_record(ns)
        if data.get("backend") != backend.value:
            return []
        return [str(t) for t in data.get("created", {}).get(str(family), [])]

    def _recorded_routing(self, ns: NetNS) -> list[RouteItem]:
        items = self._load_record(ns).get("routing", [])
        return [RouteItem(i[0], tuple(i[1]), tuple(i[2]), tuple(i[3])) for i in items if len(i) == 4]

    def _ensure_routing(self, spec: CaptureSpec, ns: NetNS) -> None:
        """Add the routing the spec needs and drop what an earlier apply added and it does not."""
        routing = _Routing(self._run, ns)
        wanted = routing_items(spec)
        routing.ensure(wanted)
        routing.remove([item for item in self._recorded_routing(ns) if item not in wanted])

    def _write_record(self, ns: NetNS, backend: Backend, spec: CaptureSpec,
                      created: Mapping[int, list[str]]) -> None:
        path = self._record_path(ns)
        if path is None:
            return
        builtin = {}
        for family in (4, 6) if backend.is_iptables else ():
            text = iptables.build(spec).restore(family)
            owned = st.all_rules(st.parse_save(self._scratch(backend, family, text))) if text else {}
            builtin[str(family)] = st.builtin_part(owned)
        routing = [[i.what, list(i.check), list(i.add), list(i.delete)] for i in routing_items(spec)]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"backend": backend.value, "builtin": builtin, "routing": routing,
                       "created": {str(f): list(t) for f, t in created.items()}}, f)
        os.replace(tmp, path)

    def forget(self, identity: tuple[int, int]) -> None:
        """Drop the record and lock of a namespace that no longer exists (``NetNS.identity()``
        taken while it did): its inode number may be given to a new namespace later."""
        if self._state_dir is None:
            return
        for suffix in ("json", "lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._state_dir, f"{identity[0]}-{identity[1]}.{suffix}"))

    def _drop_record(self, ns: NetNS) -> None:
        path = self._record_path(ns)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _merge(a: Mapping[str, Mapping[str, list[str]]], b: Mapping[str, Mapping[str, list[str]]]
           ) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {t: {c: list(r) for c, r in chains.items()} for t, chains in a.items()}
    for table, chains in b.items():
        for chain, rules in chains.items():
            out.setdefault(table, {}).setdefault(chain, []).extend(rules)
    return out


def _split_nft_tables(listing: str) -> dict[str, str]:
    tables: dict[str, str] = {}
    name = None
    buf: list[str] = []
    for line in listing.splitlines():
        if line.startswith("table inet "):
            name, buf = line.split()[2], [line]
        elif name is not None:
            buf.append(line)
            if line == "}":
                tables[name] = "\n".join(buf)
                name = None
    return tables


@lru_cache(maxsize=256)
def canonical_in_scratch(backend: Backend, family: int, script: str) -> str:
    """Load ``script`` into an empty namespace and read it back in the kernel's own text.

    iptables: ``iptables-restore`` then ``iptables-save``. nftables: ``nft -f`` then
    ``nft -s list ruleset``. Raises CaptureError when the kernel refuses the script (for
    example a group name that does not exist), before anything touched the real namespace.
    """

    def go() -> str:
        if backend is Backend.NFTABLES:
            loaded = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
            listed = ["nft", "-s", "list", "ruleset"]
        else:
            loaded = subprocess.run([*_tool(backend, family, "restore"), "--noflush"], input=script,
                                    capture_output=True, text=True, check=False)
            listed = _tool(backend, family, "save")
        if loaded.returncode != 0:
            raise CaptureError(f"the kernel refused the rules ({backend.value}, IPv{family or '4+6'}): "
                               f"{loaded.stderr.strip()}")
        out = subprocess.run(listed, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise CaptureError(f"{listed[0]} failed: {out.stderr.strip()}")
        return out.stdout

    return netns.run_in_scratch(go)


# ---- TPROXY policy routing and the IPv6 inbound-passthrough address -------------------------------


@dataclass(frozen=True)
class RouteItem:
    """One piece of routing state: how to see it, add it and delete it (``ip`` arguments)."""

    what: str
    check: tuple[str, ...]
    add: tuple[str, ...]
    delete: tuple[str, ...]


def routing_items(spec: CaptureSpec | None) -> list[RouteItem]:
    """``::6/128`` on lo for IPv6 (Envoy's inbound passthrough source) and, for TPROXY with
    inbound capture, ``ip rule fwmark MARK lookup TABLE`` + ``local default dev lo`` there."""
    items: list[RouteItem] = []
    if spec is None or spec.interception_mode is InterceptionMode.NONE:
        return items
    if spec.ipv6:
        items.append(RouteItem("address ::6/128 on lo", ("-6", "-o", "addr", "show", "dev", "lo", "to", "::6/128"),
                               ("-6", "addr", "add", "::6/128", "dev", "lo"),
                               ("-6", "addr", "del", "::6/128", "dev", "lo")))
    if spec.needs_tproxy_routing:
        mark, table = str(spec.tproxy_mark), str(spec.tproxy_route_table)
        for fam, default in (("-4", "default"), ("-6", "::/0")):
            if fam == "-6" and not spec.ipv6:
                continue
            items.append(RouteItem(f"ip {fam} rule fwmark {mark} lookup {table}",
                                   (fam, "rule", "show", "fwmark", mark, "lookup", table),
                                   (fam, "rule", "add", "fwmark", mark, "lookup", table),
                                   (fam, "rule", "del", "fwmark", mark, "lookup", table)))
            items.append(RouteItem(f"ip {fam} route local {default} dev lo table {table}",
                                   (fam, "route", "show", "table", table, "type", "local"),
                                   (fam, "route", "add", "local", default, "dev", "lo", "table", table),
                                   (fam, "route", "del", "local", default, "dev", "lo", "table", table)))
    return items


@dataclass
class _Routing:
    run: Runner
    ns: NetNS

    def _ip(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self.run(["ip", *args], self.ns)

    def present(self, item: RouteItem) -> bool:
        out = self._ip(item.check)
        return out.returncode == 0 and bool(out.stdout.strip())

    def ensure(self, items: Sequence[RouteItem]) -> None:
        added: list[RouteItem] = []
        try:
            for item in items:
                if self.present(item):
                    continue
                out = self._ip(item.add)
                if out.returncode != 0:
                    raise CaptureError(f"could not add {item.what}: {out.stderr.strip()}")
                added.append(item)
        except Exception:
            for item in reversed(added):
                self._ip(item.delete)
            raise

    def drift(self, items: Sequence[RouteItem]) -> list[st.Drift]:
        missing = tuple(item.what for item in items if not self.present(item))
        return [st.Drift("routing", missing, ())] if missing else []

    def remove(self, items: Sequence[RouteItem]) -> bool:
        removed = False
        for item in items:
            for _ in range(8):  # an ip rule can be present more than once
                if not self.present(item) or self._ip(item.delete).returncode != 0:
                    break
                removed = True
        return removed
