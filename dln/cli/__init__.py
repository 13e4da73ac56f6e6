"""The `dln` command line: one entry point, a subcommand per job.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets `handler`. The core's
own commands (generate, score, classify, prepare, train, eval) live here; every other package adds its
commands through the `dln.commands` entry-point group in `pyproject.toml`, so this package imports nothing
of `reasoning/` or `serving/` and adding an algorithm touches only its own package:

    [project.entry-points."dln.commands"]
    reason = "reasoning.reason.cli:register"

A `DLNError` ends the command with one line on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from dln import __version__
from dln.errors import DLNError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every option's default and keep the descriptions' line breaks."""


COMMAND_GROUP = "dln.commands"


def plugin_registrars() -> list:
    """`register` functions of the installed packages' commands (entry-point group `dln.commands`)."""
    from importlib.metadata import entry_points

    found = []
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except ImportError as err:  # a stale install must not take the core's commands down with it
            print(
                f"dln: warning: command {ep.name!r} ({ep.value}) cannot be imported ({err}); reinstall the "
                f"package (make setup, or pip install -e .)",
                file=sys.stderr,
            )
    return found


def build_parser() -> argparse.ArgumentParser:
    from dln.cli import lm_commands, train_command

    parser = argparse.ArgumentParser(
        prog="dln",
        description="Variational inference over LLM latent text: prompts and thinking traces as latent "
        "variables.\nEvery command explains its options with --help.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dln {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    lm_commands.register(subparsers)
    train_command.register(subparsers)
    for register in plugin_registrars():
        register(subparsers)
    return parser


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) would bury the JSON lines we print."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_libraries()
    try:
        return (
            args.handler(args, extra) if getattr(args, "accepts_overrides", False) else args.handler(args)
        ) or 0
    except DLNError as err:
        print(f"dln: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
