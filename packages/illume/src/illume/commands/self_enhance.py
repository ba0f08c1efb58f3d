"""`illume self-enhance --config RECIPE [--key value ...]`: the self-enhancement loop (ILLUME
section 3.3; illume.self_enhance): draw, assess, build Fig. C's SFT data, continue training."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "self-enhance",
        help="the model draws, an assessor judges, the model learns from it (section 3.3)",
        description="Arguments go to illume.self_enhance.self_enhance, e.g. --config "
        "recipes/shapes/self_enhance.yaml --num_prompts 200 --assessor model",
        add_help=False,  # --help is the loop's own (jsonargparse), listing every argument
    )
    parser.set_defaults(handler=_self_enhance, passthrough=True)


def _self_enhance(args: argparse.Namespace) -> int:
    from illume.self_enhance.loop import main

    return main(args.extra)
