"""Entry point of the ``weir`` command.

Each command group lives in its own module, imported only when its command runs: ``weir capture
validate`` (the istio-validation init container, run in every injected pod) and ``weir
example-app`` must not pay for the control plane's gRPC and protobuf imports. ``weir --help`` and
an unknown command import them all, to list them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from weir.cli._common import EXIT_USAGE, Parser, UsageError

MODULES = ("capture", "control", "demo", "exampleapp", "install", "nodeagent", "pods", "kubeinject", "proxyagent",
           "up")
COMMANDS = {"capture": "capture", "apply": "control", "get": "control", "delete": "control", "control": "control",
            "demo": "demo", "example-app": "exampleapp", "install": "install", "node-agent": "nodeagent",
            "pod": "pods", "node": "pods", "kube-inject": "kubeinject", "proxy-agent": "proxyagent", "up": "up",
            "status": "up", "down": "up"}
"""Command -> the module that registers it (kept equal to the modules' own registrations by a test)."""


def build_parser(only: str | None = None) -> Parser:
    """The parser with every command group, or with just the module ``only``."""
    parser = Parser(
        prog="weir",
        description="weir: a service mesh whose traffic capture is done by a chained CNI plugin and a "
        "node agent, compatible with Istio.",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=Parser)
    groups.required = True
    for name in MODULES if only is None else (only,):
        importlib.import_module(f"weir.cli.{name}").register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    command = args_in[0] if args_in else ""
    parser = build_parser(COMMANDS.get(command))
    args = parser.parse_args(args_in)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        sys.stderr.write(f"{parser.prog} {args.group}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
