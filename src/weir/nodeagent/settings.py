"""Settings of the node agent, read as Istio's agent reads them: a flag when given, else the
environment variable of Istio's name (viper's AutomaticEnv: the flag name upper-cased with
``-`` as ``_``), else the default. Every value is checked when the agent starts; a bad one is
a ``ConfigError`` naming the flag or variable and the value, never a crash later.
"""

from __future__ import annotations

from collections.abc import Mapping

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"", "0", "f", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting has a bad value; the message names it."""


class Source:
    """Flags over environment: ``get("cni-conf-dir", "MOUNTED_CNI_NET_DIR", default)`` returns
    (the name to report, the value)."""

    def __init__(self, flags: Mapping[str, str | None], env: Mapping[str, str]) -> None:
        self.flags = {k.replace("_", "-"): v for k, v in flags.items()}
        self.env = env

    def get(self, flag: str, var: str, default: str = "") -> tuple[str, str]:
        value = self.flags.get(flag)
        if value is not None:
            return f"--{flag}", str(value)
        return var, self.env.get(var, default)

    def text(self, flag: str, var: str, default: str = "") -> str:
        return self.get(flag, var, default)[1]

    def boolean(self, flag: str, var: str, default: bool) -> bool:
        name, value = self.get(flag, var, "true" if default else "false")
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{name}: invalid value {value!r}: expected true or false")

    def integer(self, flag: str, var: str, default: int, *, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
        name, value = self.get(flag, var, str(default))
        text = value.strip()
        if not text.lstrip("-").isdigit() or not minimum <= int(text) <= maximum:
            raise ConfigError(f"{name}: invalid value {value!r}: expected a whole number from {minimum} to {maximum}")
        return int(text)

    def path(self, flag: str, var: str, default: str) -> str:
        name, value = self.get(flag, var, default)
        if not value.startswith("/"):
            raise ConfigError(f"{name}: invalid value {value!r}: must be an absolute path")
        return value.rstrip("/") or "/"

    def names(self, flag: str, var: str, default: str = "") -> tuple[str, ...]:
        """A comma-separated list (namespaces, directories)."""
        return tuple(part.strip() for part in self.text(flag, var, default).split(",") if part.strip())
