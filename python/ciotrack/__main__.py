"""Command line: ``ciotrack demo`` and ``ciotrack emulator`` (also ``python -m ciotrack ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ciotrack", description="Background tracker for Customer.io")
    commands = parser.add_subparsers(dest="command", required=True)

    from ciotrack import demo

    demo_parser = commands.add_parser("demo", help="load run against the built-in emulator")
    demo.configure_parser(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    from ciotrack.emulator import cli as emulator_cli

    emulator_parser = commands.add_parser("emulator", help="run a local Customer.io Track API emulator")
    emulator_cli.configure_parser(emulator_parser)
    emulator_parser.set_defaults(run=emulator_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
