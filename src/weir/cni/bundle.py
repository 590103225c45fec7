"""Build the plugin as one executable file: a zipapp of the standard-library-only packages
(``weir.cni``, ``weir.capture``, ``weir.netns``) with an absolute ``/usr/bin/python3`` shebang.
``-I`` isolates it from the environment (no PYTHON* variables, no user site), ``-S`` skips
``site`` for a faster start: the plugin needs nothing but the standard library.

The file is written next to its destination and renamed into place, so a runtime never execs
a half-written plugin.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import tempfile
import zipfile
from pathlib import Path

PACKAGES = ("weir/cni", "weir/capture", "weir/netns")
SHEBANG = b"#!/usr/bin/python3 -IS\n"
MAIN = b"from weir.cni.plugin import main\nraise SystemExit(main())\n"


def _sources(root: Path) -> list[tuple[str, Path]]:
    files = [("weir/__init__.py", root / "weir" / "__init__.py")]
    for package in PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            files.append((f"{package}/{path.name}", path))
    return files


def _pyc(source: bytes, name: str) -> bytes:
    """Bytecode with an unchecked-hash header: zipimport loads it without recompiling."""
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    flags = (0b01).to_bytes(4, "little")  # hash-based, not checked against the source
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def build_bytes() -> bytes:
    root = Path(__file__).resolve().parents[2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for arcname, path in _sources(root):
            source = path.read_bytes()
            zf.writestr(zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0)), source)
            zf.writestr(zipfile.ZipInfo(arcname + "c", date_time=(2020, 1, 1, 0, 0, 0)), _pyc(source, arcname))
        zf.writestr(zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0)), MAIN)
    return SHEBANG + buf.getvalue()


def build(destination: str) -> str:
    """Write the plugin to ``destination`` atomically, mode 0755; returns the path."""
    data = build_bytes()
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.tmp.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # noqa: S103 - a CNI plugin is an executable the runtime runs
        os.replace(tmp, destination)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return destination
