"""Argument types and checks shared by every command: a bad value is refused where it is parsed.

Each ``type=`` callable raises ``argparse.ArgumentTypeError`` with the value, the allowed range and
what to pass instead; argparse turns it into one line (see ``OneLineParser``) and exit code 2, before
any model is loaded. Checks that need two options (``--overwrite`` with an output folder) or a
loaded package (the context window) are functions that raise ``UserError``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from bcaudio.errors import UserError
from bcaudio.machine import available_mb, cores, max_threads

MAX_SEED = 2**63 - 1


class OneLineParser(argparse.ArgumentParser):
    """argparse with one error line (``bcaudio respond: error: argument --seed: ...; see --help``), exit code 2.

    The stock parser prints the whole usage block first; on a kiosk's log that buries the line that matters.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number ({what})")
    return value


def int_range(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An int in [low, high] (no upper bound when ``high`` is None)."""
    span = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        value = _int(text, f"must be {span}" + (f"; {what}" * bool(what)))
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {span}" + (f" ({what})" * bool(what)))
        return value

    parse.__name__ = "integer"  # argparse names the type in its "invalid <type> value" fallback
    return parse


def float_range(low: float, high: float | None = None, what: str = "", open_low: bool = False,
                open_high: bool = False) -> Callable[[str], float]:
    """A finite float between ``low`` and ``high``, each end inclusive unless ``open_*``."""
    left, right = ("(" if open_low else "["), (")" if open_high else "]")
    span = f"{'>' if open_low else '>='} {low:g}" if high is None else f"in {left}{low:g}, {high:g}{right}"

    def parse(text: str) -> float:
        value = _float(text, f"must be {span}" + (f"; {what}" * bool(what)))
        too_low = value <= low if open_low else value < low
        too_high = high is not None and (value >= high if open_high else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: must be {span}" + (f" ({what})" * bool(what)))
        return value

    parse.__name__ = "number"
    return parse


non_negative_int = int_range(0)
positive_int = int_range(1)


def seed(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's generators refuse negative ones)."""
    value = _int(text, "a random seed")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not a valid seed: use a whole number >= 0 (and < 2**63)")
    return value


probability = float_range(0.0, 1.0)
# A probability threshold on which both outcomes stay possible: 0 makes every frame speech (the answer
# interrupts itself), 1 makes none.
threshold = float_range(0.0, 1.0, "0 and 1 make every or no frame pass", open_low=True, open_high=True)


def duration_ms(high: int = 600_000) -> Callable[[str], int]:
    """Milliseconds >= 0, at most ``high`` (default 10 minutes)."""
    return int_range(0, high, "milliseconds")


def threads(text: str) -> int:
    """Intra-op threads: 0 (onnxruntime's default, one per core) up to a few per core; a warning above the cores."""
    limit = max_threads()
    value = _int(text, "intra-op threads")
    if not 0 <= value <= limit:
        raise argparse.ArgumentTypeError(f"{value} threads is out of range: this machine has {cores()} core(s); "
                                         f"use 0 (one per core) or 1..{limit}")
    if value > cores():
        print(f"warning: {value} threads on {cores()} core(s): threads beyond the cores compete for them",
              file=sys.stderr)
    return value


def memory_mb(low: int = 1, share: float = 0.5) -> Callable[[str], int]:
    """A buffer size in MB of at most ``share`` of the memory available now (an array that cannot swap the box)."""

    def parse(text: str) -> int:
        value = int_range(low)(text)
        free = available_mb()
        if free and value > share * free:
            raise argparse.ArgumentTypeError(f"{value} MB is more than {share:.0%} of the {free} MB of memory "
                                             f"available; use at most {int(share * free)}")
        return value

    parse.__name__ = "integer"
    return parse


def int_list(low: int = 1, high: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated ints, each in [low, high]: ``128,1024``."""
    one = int_range(low, high)

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(one(x.strip()) for x in text.split(",") if x.strip())
        if not values:
            raise argparse.ArgumentTypeError("expected comma-separated whole numbers, got nothing")
        return values

    parse.__name__ = "list"
    return parse


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """Comma-separated names, each one of ``choices``, no repeats."""
    allowed = tuple(choices)

    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or 'empty list'}; choose from "
                                             f"{','.join(allowed)}")
        return list(dict.fromkeys(names))

    parse.__name__ = "list"
    return parse


def input_file(text: str) -> Path:
    """An existing, readable file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path}: not readable (permissions); fix them or copy the file")
    return path


def input_folder(text: str) -> Path:
    """An existing folder (a checkpoint or a model package)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; give the folder")
    return path


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: folder {parent} is not writable; choose another place")


def output_file(*extensions: str) -> Callable[[str], Path]:
    """A file to write: one of ``extensions`` (e.g. ``.wav``), in an existing writable folder, not a folder itself."""
    allowed = tuple(e.lower() for e in extensions)

    def parse(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
        if allowed and path.suffix.lower() not in allowed:
            raise argparse.ArgumentTypeError(f"{path}: cannot write {path.suffix or 'a file without extension'}; "
                                             f"use {' or '.join(allowed)}")
        _writable_parent(path)
        if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
            # the mode bits too: root may write anything, but a file marked read-only is not to be replaced
            raise argparse.ArgumentTypeError(f"{path}: exists and is read-only; choose another name")
        return path

    parse.__name__ = "path"
    return parse


def output_folder(text: str) -> Path:
    """A folder to create or replace (a package, a checkpoint, a work folder): its parent exists and is writable.

    Whether an existing one may be replaced is ``check_overwrite``'s call, once ``--overwrite`` is known.
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; give a folder")
    _writable_parent(path)
    return path


def work_folder(text: str) -> Path:
    """A folder to write into (created when missing): an existing one must be writable."""
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} is a file; give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{path}: not writable; choose another folder")
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot be created ({ancestor} is not writable)")
    return path


def check_overwrite(path: Path, overwrite: bool, what: str = "package") -> None:
    """An existing, non-empty ``path`` is replaced only with ``--overwrite``."""
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace the {what} (the old one is kept until the new "
                        "one is complete), or choose a new folder")


def check_distinct(out: Path, source: Path, what: str) -> None:
    """``--out`` must not be, hold or sit inside the folder it is made from (replacing it would delete the source)."""
    out_r, src_r = out.resolve(), source.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise UserError(f"--out {out} overlaps the {what} {source}; choose a folder outside it")


def name_or_file(names: Iterable[str], extension: str) -> Callable[[str], str]:
    """One of ``names`` (a built-in recipe, say) or an existing readable file ending in ``extension``."""
    allowed = tuple(names)

    def parse(text: str) -> str:
        if text in allowed:
            return text
        if not text.endswith(extension):
            raise argparse.ArgumentTypeError(f"unknown {text!r}; choose from {', '.join(allowed)} or give a "
                                             f"{extension} file")
        return str(input_file(text))

    parse.__name__ = "name"
    return parse


PORT = int_range(0, 65535, "a TCP port; 0 picks a free one")
IDLE_SECONDS = float_range(1, 86400, "seconds: one second to one day")
