"""The ``bcaudio`` command. Subcommands import their package lazily: ``respond`` never pays for torch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import bcaudio
from bcaudio.cli.validators import OneLineParser
from bcaudio.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bcaudio", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bcaudio {bcaudio.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also BCAUDIO_DEBUG=1; accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    from bcaudio.cli.model import add_parser as add_model_parsers

    add_model_parsers(sub)
    from bcaudio.cli.turn import add_parser as add_turn_parsers

    add_turn_parsers(sub)
    from bcaudio.cli.profile import add_parser as add_profile_parsers

    add_profile_parsers(sub)
    from bcaudio.cli.chat import add_parser as add_chat_parsers

    add_chat_parsers(sub)
    from bcaudio.cli.serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    from bcaudio.cli.fleet import add_parser as add_fleet_parser

    add_fleet_parser(sub)
    from bcaudio.cli.quant import add_parser as add_quant_parser

    add_quant_parser(sub)
    from bcaudio.cli.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    _describe(sub)
    return parser


class DefaultsShown(argparse.HelpFormatter):
    """Appends an option's default to its help, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not unset and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _describe(sub: argparse._SubParsersAction) -> None:
    """Every subcommand's --help opens with its one-line help and shows each option's default."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, parser in sub.choices.items():
        parser.description = parser.description or helps.get(name)
        parser.formatter_class = DefaultsShown
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


# Errors that mean "the user can fix this" (their message names the fix), by module: a module not imported
# cannot have raised its error, so none is imported here.
KNOWN_ERRORS = (("bcaudio.config", "ConfigError"), ("bcaudio.export.checkpoint", "CheckpointError"),
                ("bcaudio.runtime.audio.devices", "AudioDeviceError"),
                ("bcaudio.runtime.audio.files", "AudioInputError"), ("bcaudio.runtime.audio.vad", "VadModelError"),
                ("bcaudio.runtime.package.manifest", "ManifestError"),
                ("bcaudio.runtime.package.profiles", "ProfileError"), ("bcaudio.quant.recipes", "QuantError"),
                ("bcaudio.runtime.audio.turn_detector", "TurnModelError"))


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UserError]
    for module, name in KNOWN_ERRORS:
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


# A module missing on a partial install -> the extra that brings it.
EXTRAS = {"torch": "export", "onnx": "export", "onnxscript": "export", "safetensors": "export",
          "transformers": "bench", "optimum": "bench", "onnxruntime": "cpu", "matplotlib": "charts",
          "sounddevice": "live"}
COMMAND_EXTRAS = {"bench": "bench"}  # commands whose own extra holds everything they import


def missing_extra_line(command: str, exc: ModuleNotFoundError) -> str:
    """"`bcaudio export` needs the export extra: pip install 'bcaudio[export]'" for a module an extra brings."""
    module = (exc.name or "").split(".")[0]
    extra = COMMAND_EXTRAS.get(command, EXTRAS.get(module)) if module in EXTRAS else None
    if extra is None:
        return (f"bcaudio {command}: error: Python module {module or exc} is missing; reinstall bcaudio "
                "(pip install --force-reinstall bcaudio)")
    hint = " (or 'bcaudio[gpu]' on a CUDA machine)" if extra == "cpu" else ""
    return (f"bcaudio {command}: error: `bcaudio {command}` needs the {extra} extra: pip install 'bcaudio[{extra}]'"
            f"{hint} (module {module} is not installed)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _os_error_line(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; check the path, its permissions and the free space"


def _quiet_stdout() -> None:
    """After a broken pipe (`bcaudio profiles | head`), point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("BCAUDIO_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a refused argument (its one line is printed): a code
        return exc.code if isinstance(exc.code, int) else 2
    func: Callable[[argparse.Namespace], None] = args.func
    command = args.command
    try:
        func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _known_errors()):
            line = f"bcaudio {command}: error: {_one_line(exc)}"
        elif isinstance(exc, ModuleNotFoundError):
            line = missing_extra_line(command, exc)
        elif isinstance(exc, OSError):
            line = f"bcaudio {command}: error: {_os_error_line(exc)}"
        else:
            print(f"bcaudio {command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: run again "
                  "with --debug for the traceback and report it)", file=sys.stderr)
            return 1
        print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
