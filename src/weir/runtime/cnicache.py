"""libcni's on-disk result cache: one JSON file per attachment, in libcni's own layout.

``<cache_dir>/results/<network>-<containerid>-<ifname>`` holds a ``cniCacheV1`` record (the
conflist bytes, base64-encoded as Go encodes ``[]byte``; the runtime arguments; the chain's
final result), so a runtime sharing the directory with containerd or CRI-O reads the same
files. Records are written atomically (temporary file, fsync, rename) with libcni's modes
(directory 0700, file 0600).

This module knows files and JSON only: nothing of plugins, namespaces or pods.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND = "cniCacheV1"


class CorruptCacheError(ValueError):
    """A cache file exists but cannot be read as a cached result."""


@dataclass(frozen=True)
class CacheEntry:
    """One cached attachment, as libcni's ``cachedInfo`` holds it."""

    container_id: str
    network: str
    ifname: str
    config: bytes = b""
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record in libcni's field order; empty optional fields left out (``omitempty``)."""
        record: dict[str, Any] = {
            "kind": KIND,
            "containerId": self.container_id,
            "config": base64.b64encode(self.config).decode("ascii"),
            "ifName": self.ifname,
            "networkName": self.network,
        }
        if self.netns:
            record["netns"] = self.netns
        if self.cni_args:
            record["cniArgs"] = [[k, v] for k, v in self.cni_args]
        if self.capability_args:
            record["capabilityArgs"] = dict(self.capability_args)
        if self.result:
            record["result"] = dict(self.result)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> CacheEntry:
        """Parse a ``cniCacheV1`` record; raises CorruptCacheError for anything else."""
        if record.get("kind") != KIND:
            raise CorruptCacheError(f"cache record kind is {record.get('kind')!r}, not {KIND!r}")
        try:
            args = tuple((str(k), str(v)) for k, v in record.get("cniArgs") or ())
            result = record.get("result")
            caps = record.get("capabilityArgs") or {}
            if result is not None and not isinstance(result, dict):
                raise TypeError("result is not an object")
            if not isinstance(caps, dict):
                raise TypeError("capabilityArgs is not an object")
            return cls(
                container_id=str(record["containerId"]),
                network=str(record["networkName"]),
                ifname=str(record["ifName"]),
                config=base64.b64decode(record.get("config") or "", validate=True),
                netns=str(record.get("netns") or ""),
                cni_args=args,
                capability_args=caps,
                result=result,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCacheError(f"bad cache record: {exc}") from None


@dataclass(frozen=True)
class ResultCache:
    """The ``results`` directory under a cache root (libcni's ``CacheDir``, /var/lib/cni)."""

    root: Path

    @property
    def directory(self) -> Path:
        return self.root / "results"

    def path(self, network: str, container_id: str, ifname: str) -> Path:
        if not (network and container_id and ifname):
            raise ValueError(f"a cache path needs network ({network!r}), container ID ({container_id!r}) "
                             f"and interface name ({ifname!r})")
        return self.directory / f"{network}-{container_id}-{ifname}"

    def write(self, entry: CacheEntry) -> Path:
        """Store ``entry`` atomically, replacing any earlier record for the same attachment."""
        target = self.path(entry.network, entry.container_id, entry.ifname)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(entry.to_json(), separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:  # mkstemp creates it 0600, as libcni does
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def read(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        """The cached record, None when there is none; CorruptCacheError when it is unreadable.

        A file without ``kind`` that is itself a result (libcni's legacy format, a bare result
        with a ``cniVersion``) is read as the result of an otherwise empty record.
        """
        target = self.path(network, container_id, ifname)
        try:
            raw = target.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise CorruptCacheError(f"{target}: not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise CorruptCacheError(f"{target}: not a JSON object")
        if "kind" not in record and "cniVersion" in record:
            return CacheEntry(container_id, network, ifname, result=record)
        try:
            return CacheEntry.from_json(record)
        except CorruptCacheError as exc:
            raise CorruptCacheError(f"{target}: {exc}") from None

    def remove(self, network: str, container_id: str, ifname: str) -> bool:
        """Remove the record; whether there was one."""
        try:
            self.path(network, container_id, ifname).unlink()
        except FileNotFoundError:
            return False
        return True

    def entries(self, network: str | None = None) -> Sequence[CacheEntry]:
        """Every readable ``cniCacheV1`` record (of ``network``, if given), sorted by file name.

        Unreadable and foreign files are skipped, as libcni's GetCachedAttachments does.
        """
        try:
            names = sorted(p.name for p in self.directory.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                entry = CacheEntry.from_json(json.loads((self.directory / name).read_bytes()))
            except (OSError, ValueError, AttributeError):
                continue
            if not (entry.ifname and entry.network):
                continue
            if network is None or entry.network == network:
                found.append(entry)
        return found
