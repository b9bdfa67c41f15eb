"""The ``rnnkit`` command: one thin module per subcommand (train, sample, eval).

Every expected failure (a bad file, a bad flag, a corrupt checkpoint, a diverging run) ends in one
line on stderr starting with ``rnnkit`` and a non-zero exit status, never a traceback
(``RNNKIT_DEBUG=1`` shows the traceback, for bug reports).

Exit status: 0 done; 2 bad input (flags, files, checkpoints) or a failed write; 3 training
stopped itself (NaN or exploding loss); 130 interrupted by Ctrl-C (``train`` saves ``last.npz``
first).
"""
from __future__ import annotations

import os
import sys

from . import eval as eval_cmd
from . import sample as sample_cmd
from . import train as train_cmd
from .args import Parser

EXIT_ERROR = 2          # bad input, bad checkpoint, bad flags, a write that failed
EXIT_STOPPED = 3        # training stopped itself (NaN / exploding loss)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class CliError(Exception):
    """An error to report as one line (the subcommands raise it, or ValueError subclasses)."""


def build_parser() -> Parser:
    parser = Parser(
        prog="rnnkit",
        description="Recurrent neural networks from scratch on NumPy: train a language model on "
                    "any text file on a CPU, sample from it, evaluate it.",
        epilog="Run 'rnnkit SUBCOMMAND --help' for each subcommand's options. Exit status: 0 "
               "done, 2 bad input or a failed write, 3 training stopped on a NaN or exploding "
               "loss, 130 interrupted (Ctrl-C).")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    train_cmd.add_parser(sub)
    sample_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    return parser


def describe(e: BaseException) -> str:
    """One line for an error: an OSError as ``FILE: reason``, anything else as its message."""
    if isinstance(e, OSError) and e.strerror and e.filename and str(e).startswith("["):
        return f"{e.filename}: {e.strerror}"
    text = str(e) or type(e).__name__
    return " ".join(text.split())            # never more than one line


def main(argv=None) -> int:
    from ..checkpoint import CheckpointError
    from ..train import TrainingStopped

    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        # generated text (a byte model's U+FFFD, any character of any file) must not stop a run
        # on a terminal or pipe whose encoding lacks it: such characters print as "?"
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        return args.run(args) or 0
    except BrokenPipeError:      # e.g. `rnnkit sample ... | head`: the reader has gone
        _silence_stdout()
        return 0
    except TrainingStopped as e:
        print(f"rnnkit {args.command}: {describe(e)}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        kept = "; checkpoints saved so far are kept" if args.command == "train" else ""
        print(f"rnnkit {args.command}: interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        if os.environ.get("RNNKIT_DEBUG"):
            raise
        print(f"rnnkit {args.command}: out of memory; try a smaller --hidden-size, --batch-size "
              f"or --bptt", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, CheckpointError, ValueError, OSError, RuntimeError, ImportError,
            OverflowError) as e:
        if os.environ.get("RNNKIT_DEBUG"):
            raise
        print(f"rnnkit {args.command}: {describe(e)}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
