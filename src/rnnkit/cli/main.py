"""The ``rnnkit`` command: one thin module per subcommand (train, sample, eval).

Every expected failure (a bad file, a bad flag, a corrupt checkpoint, a diverging run) ends in one
line on stderr starting with ``rnnkit`` and a non-zero exit status, never a traceback
(``RNNKIT_DEBUG=1`` shows the traceback, for bug reports).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import eval as eval_cmd
from . import sample as sample_cmd
from . import train as train_cmd

EXIT_ERROR = 2          # bad input, bad checkpoint, bad flags
EXIT_STOPPED = 3        # training stopped itself (NaN / exploding loss)


class CliError(Exception):
    """An error to report as one line (the subcommands raise it, or ValueError subclasses)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit",
        description="Recurrent neural networks from scratch on NumPy: train a language model on "
                    "any text file on a CPU, sample from it, evaluate it.",
        epilog="Run 'rnnkit SUBCOMMAND --help' for each subcommand's options.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    train_cmd.add_parser(sub)
    sample_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from ..checkpoint import CheckpointError
    from ..train import TrainingStopped

    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except BrokenPipeError:      # e.g. `rnnkit sample ... | head`: the reader has gone
        sys.stderr.close()
        return 0
    except TrainingStopped as e:
        print(f"rnnkit: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except (CliError, CheckpointError, ValueError, OSError, RuntimeError, ImportError) as e:
        if os.environ.get("RNNKIT_DEBUG"):
            raise
        print(f"rnnkit {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
