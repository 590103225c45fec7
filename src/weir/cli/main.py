"""Entry point of the ``weir`` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from weir.cli import capture, control, demo, exampleapp, install, kubeinject, nodeagent, pods, proxyagent, up
from weir.cli._common import EXIT_USAGE, Parser, UsageError


def build_parser() -> Parser:
    parser = Parser(
        prog="weir",
        description="weir: a service mesh whose traffic capture is done by a chained CNI plugin and a "
        "node agent, compatible with Istio.",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=Parser)
    groups.required = True
    capture.register(groups)
    control.register(groups)
    demo.register(groups)
    exampleapp.register(groups)
    install.register(groups)
    nodeagent.register(groups)
    pods.register(groups)
    kubeinject.register(groups)
    proxyagent.register(groups)
    up.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
