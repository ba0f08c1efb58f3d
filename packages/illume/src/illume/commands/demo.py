"""`illume demo`: ShapesWorld data, every stage trained, evaluated, reported (see illume.demo)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="train the whole system on ShapesWorld from nothing; write report.html"
    )
    demo.add_argument(
        "--out", default="illume-demo", help="where everything goes (default ./illume-demo)"
    )
    demo.add_argument(
        "--chain",
        "--profile",
        dest="chain",
        default="default",
        metavar="NAME_OR_FILE",
        help="the chain to run: a shipped one (default: about 14 min on 2 CPU cores, from the "
        "shipped encoder; scratch: the encoder trained too; full: the benchmark figures, hours; "
        "smoke: seconds, plumbing only) or a chain YAML file (recipes/shapes/chains/*.yaml)",
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from illume.chain import Chain
    from illume.demo import headline_table, run_demo, summary_line

    from .tasks import UsageError

    try:
        chain = Chain.load(args.chain)
    except ValueError as err:
        raise UsageError(str(err)) from None
    metrics = run_demo(args.out, chain)
    out = Path(args.out).resolve()
    print(
        f"report: {out / 'report.html'}\nmetrics: {out / 'metrics.json'}\npipeline: {out / 'pipeline'}"
    )
    print(f'try: illume generate --model {out / "pipeline"} "a red circle above a blue square"')
    print(headline_table(metrics))
    print(summary_line(metrics))
    return 0
