"""Command line: ``ciotrack <command> ...`` (also ``python -m ciotrack ...``).

Each subcommand lives in its own module with ``configure_parser(parser)`` and ``run(args) -> int``.
The table below names the module; it is imported only when that command is chosen (or its
``--help`` is asked for), so ``ciotrack --help`` works on a base install and a command whose extra
is missing says which ``pip install 'ciotrack[...]'`` brings it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from ciotrack._version import __version__

# name -> (module, one-line help, the extra its module needs or None)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("ciotrack.demo", "load run against the built-in emulator", "emulator"),
    "emulator": ("ciotrack.emulator.cli", "run a local Customer.io Track API emulator", "emulator"),
    "doctor": ("ciotrack.doctor.cli", "check an integration (credentials, region, network, clock, spool, Redis)", None),
    # The blast alone; `ciotrack loadtest --webhooks URL` runs the same add_arguments/run within a load test.
    "webhooks-blast": ("ciotrack.webhooks.blast", "blast signed reporting webhooks at an endpoint", None),
    "worker": ("ciotrack.fleet.cli", "deliver a Redis stream of batches to Customer.io (fleet mode)", "fleet"),
    "deadletter": ("ciotrack.fleet.deadletter", "list, replay or purge fleet mode's dead-letter stream", "fleet"),
    "loadtest": ("ciotrack.loadtest.cli", "k6-style ramping load test (emulator, --endpoint, or --real)", "loadtest"),
}


class MissingExtra(SystemExit):
    """A subcommand's optional dependency is not installed: one line that says what to install."""


def _missing_extra(name: str, exc: ModuleNotFoundError) -> MissingExtra:
    """The one-line hint for a third-party module that is not installed (ciotrack's own missing
    modules are bugs and re-raised by the callers)."""
    extra = COMMANDS[name][2]
    hint = f"pip install 'ciotrack[{extra}]'" if extra else "reinstall ciotrack"
    return MissingExtra(f"ciotrack {name}: needs the module {exc.name!r}, which is not installed: {hint}")


def _is_third_party(exc: ModuleNotFoundError) -> bool:
    return exc.name is not None and exc.name.split(".")[0] != "ciotrack"


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if not _is_third_party(exc):
            raise
        raise _missing_extra(name, exc) from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported (to add its options)."""
    parser = argparse.ArgumentParser(prog="ciotrack", description="Background tracker for Customer.io")
    parser.add_argument("--version", action="version", version=f"ciotrack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _load(name)
            module.configure_parser(sub)
            sub.set_defaults(run=module.run)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen(args_list)).parse_args(args_list)
    try:
        result: int = args.run(args)
    except ModuleNotFoundError as exc:
        # A command may import its extra's modules only when it runs (``demo`` starts the emulator).
        if not _is_third_party(exc):
            raise
        raise _missing_extra(args.command, exc) from None
    return result


if __name__ == "__main__":
    sys.exit(main())
