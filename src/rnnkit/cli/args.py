"""What the subcommands share about flags: a parser whose errors are one line, help that shows
defaults only where they say something, and argument types that check ranges.

A bad value is refused while the command line is read, before any file is read or written:

    p.add_argument("--length", type=int_at_least(0))      # rnnkit sample: error: argument
                                                          #   --length: must be >= 0, got -1
"""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), not usage + error.

    ``add_subparsers`` makes the subcommands' parsers of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless the default says nothing (None, False, or
    a blank string) or the help already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, str) and not default.strip())
                or "default" in text or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(low: int):
    """An argparse type: an integer ``>= low``."""
    def parse(text):
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False):
    """An argparse type: a finite float within the bounds (closed unless ``*_open``)."""
    def parse(text):
        value = _number(float, text)
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {_describe()}, got {value:g}")
        return value

    def _describe():
        if low is not None and high is not None:
            return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        if low is not None:
            return f"{'>' if low_open else '>='} {low:g}"
        return f"{'<' if high_open else '<='} {high:g}"

    parse.__name__ = "number"
    return parse


def note(command: str, message: str) -> None:
    """A one-line notice on stderr (something the user should know, not an error)."""
    print(f"rnnkit {command}: note: {message}", file=sys.stderr)


def shown(symbols, limit: int = 10) -> str:
    """``'a', 'b', ... (N more)``: symbols quoted for a one-line message."""
    items = [repr(s) for s in symbols[:limit]]
    more = len(symbols) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")
