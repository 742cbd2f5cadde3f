"""The ``bcaudio`` command. Subcommands import their package lazily: ``respond`` never pays for torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bcaudio.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcaudio", description=__doc__)
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
    try:
        from bcaudio.cli.quant import add_parser as add_quant_parser
    except ImportError:  # runtime-only install: no onnx, no `quantize`
        pass
    else:
        add_quant_parser(sub)
    try:
        from bcaudio.cli.bench import add_parser as add_bench_parser
    except ImportError:  # runtime-only install: no benchmarks
        pass
    else:
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


def _known_errors() -> tuple[type[BaseException], ...]:
    from bcaudio.config import ConfigError

    errors: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError]
    try:
        from bcaudio.export.checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # runtime-only install: no torch, no export errors to catch
        pass
    from bcaudio.runtime.audio.devices import AudioDeviceError
    from bcaudio.runtime.audio.files import AudioInputError
    from bcaudio.runtime.audio.vad import VadModelError
    from bcaudio.runtime.package.manifest import ManifestError
    from bcaudio.runtime.package.profiles import ProfileError

    errors += [AudioInputError, ManifestError, ProfileError, AudioDeviceError, VadModelError]
    try:
        from bcaudio.quant.recipes import QuantError

        errors.append(QuantError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _known_errors()):
            print(f"bcaudio {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
