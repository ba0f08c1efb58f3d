"""The `illume` command line.

Each subcommand imports its heavy dependencies (torch, transformers) only when it runs, so
`illume --version` and `illume shapes ...` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

#: The distributions of the illume monorepo, in dependency order.
PACKAGES = (
    "illume-core",
    "illume-eval",
    "illume-tokenizer",
    "illume-detokenizer",
    "illume-mllm",
    "illume-trainer",
    "illume-runtime",
    "illume",
)


def installed_packages() -> dict[str, str]:
    """Every installed illume distribution and its version (ours first, then any plug-ins)."""
    found = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "illume" or name.startswith("illume-"):
            found[name] = dist.version
    order = {name: i for i, name in enumerate(PACKAGES)}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(
            option_strings, dest, nargs=0, help="print every installed illume package and exit"
        )

    def __call__(self, parser, namespace, values, option_string=None):
        for name, version in installed_packages().items():
            print(f"{name} {version}")
        parser.exit()


Command = Callable[[argparse.Namespace], int]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says its default in its own words
    (or has none worth saying: None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text
            and action.default is not None
            and action.default is not False  # 0 == False: compared by identity
            and action.default != argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illume",
        description="ILLUME: a unified multimodal LLM that sees, draws and self-enhances.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .commands import chat, data, demo, self_enhance, serve, shapes, tasks

    demo.register(commands)
    shapes.register(commands)
    tasks.register(commands)
    self_enhance.register(commands)
    serve.register(commands)
    chat.register(commands)
    data.register(commands)
    for each in _all_parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
    return parser


def _show_library_messages() -> None:
    """The packages log through `logging` (loggers "illume", "illume_*"); a command shows their
    notices on stderr as `illume: ...`, and quiets the loading bars of transformers and diffusers
    (a pipeline loads in a second; the bars would be most of what a command prints)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("illume: %(message)s"))
    for name in ("illume", "illume_core", "illume_eval", "illume_tokenizer", "illume_detokenizer",
                 "illume_mllm", "illume_trainer", "illume_runtime"):  # fmt: skip
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command. A wrong command-line value is one line `illume: error: ...` and exit 2;
    any other failure one line and exit 1 (ILLUME_TRACEBACK=1 shows the traceback)."""
    import os

    from .commands.tasks import UsageError

    parser = build_parser()
    # a passthrough command (self-enhance) hands everything after its name to its own parser
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.extra = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Command | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    _show_library_messages()
    try:
        return handler(args)
    except UsageError as err:
        parser.exit(2, f"illume: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "illume: interrupted\n")
    except Exception as err:
        if os.environ.get("ILLUME_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        parser.exit(1, f"illume: error: {message} (ILLUME_TRACEBACK=1 shows where)\n")
    return 1  # not reached: parser.exit raises SystemExit


if __name__ == "__main__":
    sys.exit(main())
