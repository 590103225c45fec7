"""Pure state handling for the executor: parse what the kernel holds, find what is weir's,
compare it with what a spec wants, and write the script that turns one into the other.

Nothing here runs a command. ``apply.py`` feeds it the output of ``iptables-save`` and
``nft -s list table`` and runs the scripts it returns.

Ownership. weir owns every ``ISTIO_*`` chain and, in the built-in chains, the rules that jump
to an ``ISTIO_*`` chain, the rules the spec being applied would add, and the rules recorded
when weir last applied rules to that namespace. Nothing else is touched.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weir.capture.iptables import BUILTIN_CHAINS, CHAIN_PREFIX

# ---- iptables ---------------------------------------------------------------------------------


@dataclass
class Table:
    """One table of ``iptables-save`` output: chains in order, each with its rules' text.

    A rule's text is what follows ``-A CHAIN `` in the save output.
    """

    chains: dict[str, list[str]] = field(default_factory=dict)


Tables = dict[str, Table]


def parse_save(text: str) -> Tables:
    """Parse ``iptables-save`` output (comments and counters ignored)."""
    tables: Tables = {}
    current: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("[") and "] " in line:  # a rule's counters (iptables-save -c)
            line = line.split("] ", 1)[1]
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), Table())
        elif current is None:
            raise ValueError(f"iptables-save output has a line outside a table: {raw!r}")
        elif line.startswith(":"):
            current.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            current.chains.setdefault(chain, []).append(rest[0] if rest else "")
        else:
            raise ValueError(f"unexpected line in iptables-save output: {raw!r}")
    return tables


def _target(rule: str) -> str | None:
    parts = rule.split()
    if "-j" in parts:
        i = len(parts) - 1 - parts[::-1].index("-j")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def is_weir_chain(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIX)


Owned = dict[str, dict[str, list[str]]]  # table -> chain -> rules, in order


def owned_rules(tables: Tables, known_builtin: Mapping[str, Mapping[str, Iterable[str]]]) -> Owned:
    """weir's part of ``tables``: every ISTIO_* chain whole, and in built-in chains the
    rules that jump to an ISTIO_* chain or appear in ``known_builtin`` (table -> chain ->
    rule texts that weir adds)."""
    owned: Owned = {}
    for name, table in tables.items():
        known = known_builtin.get(name, {})
        for chain, rules in table.chains.items():
            if is_weir_chain(chain):
                owned.setdefault(name, {})[chain] = list(rules)
            elif chain in BUILTIN_CHAINS:
                mine = set(known.get(chain, ()))
                picked = [r for r in rules if (_target(r) or "").startswith(CHAIN_PREFIX) or r in mine]
                if picked:
                    owned.setdefault(name, {})[chain] = picked
    return owned


def all_rules(tables: Tables) -> Owned:
    """Every rule of ``tables`` as weir's: for a scratch namespace that holds only the spec's
    rules (ISTIO_* chains even when empty, built-in chains when they have rules)."""
    owned: Owned = {}
    for name, table in tables.items():
        for chain, rules in table.chains.items():
            if is_weir_chain(chain) or rules:
                owned.setdefault(name, {})[chain] = list(rules)
    return owned


def builtin_part(owned: Owned) -> dict[str, dict[str, list[str]]]:
    return {t: {c: r for c, r in chains.items() if c in BUILTIN_CHAINS} for t, chains in owned.items()}


@dataclass(frozen=True)
class Drift:
    """One place where the rules in the kernel differ from the spec."""

    where: str
    expected: tuple[str, ...]
    actual: tuple[str, ...]

    def describe(self) -> str:
        lines = [f"{self.where}:"]
        for line in difflib.ndiff(list(self.expected), list(self.actual)):
            if line.startswith("- "):
                lines.append(f"  - {line[2:]}    (missing)")
            elif line.startswith("+ "):
                lines.append(f"  + {line[2:]}    (unexpected)")
        return "\n".join(lines)


def compare(label: str, expected: Owned, actual: Owned) -> list[Drift]:
    """Differences between two owned states, chain by chain, in a stable order."""
    drifts = []
    for table in sorted(set(expected) | set(actual)):
        exp, act = expected.get(table, {}), actual.get(table, {})
        for chain in sorted(set(exp) | set(act), key=lambda c: (c not in BUILTIN_CHAINS, c)):
            e, a = exp.get(chain), act.get(chain)
            if e == a:
                continue
            where = f"{label} {table} {chain}"
            if e is None:
                where += " (chain should not exist)"
            elif a is None and is_weir_chain(chain):
                where += " (chain missing)"
            drifts.append(Drift(where, tuple(f"-A {chain} {r}" for r in e or ()),
                                tuple(f"-A {chain} {r}" for r in a or ())))
    return drifts


def replace_script(current: Owned, desired_restore: str, desired: Owned) -> str:
    """``iptables-restore --noflush`` input that removes weir's ``current`` rules and chains
    and installs ``desired_restore`` (the renderer's text), table by table."""
    desired_tables = parse_restore_tables(desired_restore)
    out: list[str] = []
    for table in sorted(set(current) | set(desired_tables)):
        now = current.get(table, {})
        want_chains = [c for c in desired.get(table, {}) if is_weir_chain(c)]
        old_chains = [c for c in now if is_weir_chain(c)]
        body = [f":{c} - [0:0]" for c in dict.fromkeys(old_chains + want_chains)]
        for chain, rules in now.items():
            if chain in BUILTIN_CHAINS:
                body += [f"-D {chain} {r}" for r in rules]
        body += [f"-X {c}" for c in old_chains if c not in want_chains]
        body += [line for line in desired_tables.get(table, []) if not line.startswith("-N ")]
        if body:
            out += [f"*{table}", *body, "COMMIT"]
    return "".join(line + "\n" for line in out)


def parse_restore_tables(text: str) -> dict[str, list[str]]:
    """The renderer's restore text as table -> lines (without ``*table`` and ``COMMIT``)."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("* ") or line.startswith("*"):
            current = tables.setdefault(line.lstrip("* ").strip(), [])
        elif line == "COMMIT":
            current = None
        elif line and current is not None:
            current.append(line)
    return tables


def restore_only(text: str, tables: Iterable[str]) -> str:
    """The part of ``iptables-save`` output that restores exactly ``tables`` (for rollback)."""
    wanted = set(tables)
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("*"):
            keep = line[1:].strip() in wanted
        if keep and not line.startswith("#"):
            out.append(line)
        if line == "COMMIT":
            keep = False
    return "".join(line + "\n" for line in out)


_COUNTERS = re.compile(r"\[\d+:\d+\]")


def same_tables(a: str, b: str, tables: Iterable[str]) -> bool:
    """Whether two ``iptables-save`` outputs hold the same ``tables`` (counters ignored)."""
    wanted = list(tables)
    return _COUNTERS.sub("", restore_only(a, wanted)) == _COUNTERS.sub("", restore_only(b, wanted))


# ---- nftables ---------------------------------------------------------------------------------


def parse_nft_table(text: str) -> dict[str, list[str]]:
    """``nft -s list table inet X`` output as chain -> lines (the hook line first, if any)."""
    chains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            current = chains.setdefault(line[len("chain "):-1].strip(), [])
        elif line == "}":
            current = None
        elif line and current is not None:
            current.append(line)
    return chains


def compare_nft(table: str, expected: Mapping[str, list[str]] | None,
                actual: Mapping[str, list[str]] | None) -> list[Drift]:
    if expected == actual:
        return []
    if expected is None:
        return [Drift(f"nftables table inet {table} (should not exist)", (),
                      tuple(f"{c}: {r}" for c, rs in (actual or {}).items() for r in rs))]
    if actual is None:
        return [Drift(f"nftables table inet {table} (missing)",
                      tuple(f"{c}: {r}" for c, rs in expected.items() for r in rs), ())]
    drifts = []
    for chain in sorted(set(expected) | set(actual)):
        e, a = expected.get(chain), actual.get(chain)
        if e != a:
            drifts.append(Drift(f"nftables inet {table} chain {chain}", tuple(e or ()), tuple(a or ())))
    return drifts


_BARE_BASE_CHAIN = re.compile(r"type \w+ hook \w+ priority [^;]+; policy accept;")


def nft_table_is_bare(listing: str) -> bool:
    """Whether ``nft list table`` output shows nothing but built-in base chains that accept
    and hold no rules: what iptables-nft leaves behind once every rule in a table is gone."""
    lines = [line.strip() for line in listing.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("table ") or not lines[0].endswith("{"):
        return False
    for line in lines[1:]:
        if line == "}" or _BARE_BASE_CHAIN.fullmatch(line):
            continue
        if line.startswith("chain ") and line.endswith("{") and line[len("chain "):-1].strip() in BUILTIN_CHAINS:
            continue
        return False
    return True
