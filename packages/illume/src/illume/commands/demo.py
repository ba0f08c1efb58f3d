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
        "--profile", default="default", choices=("default", "scratch", "full", "smoke"),
        help="default: about 13 min on 2 CPU cores, from the shipped encoder; scratch: the encoder "
        "trained too; full: the benchmark figures, hours; smoke: seconds, plumbing only",
    )  # fmt: skip
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from illume.demo import headline_table, run_demo, summary_line

    metrics = run_demo(args.out, args.profile)
    out = Path(args.out).resolve()
    print(
        f"report: {out / 'report.html'}\nmetrics: {out / 'metrics.json'}\npipeline: {out / 'pipeline'}"
    )
    print(f'try: illume generate --model {out / "pipeline"} "a red circle above a blue square"')
    print(headline_table(metrics))
    print(summary_line(metrics))
    return 0
