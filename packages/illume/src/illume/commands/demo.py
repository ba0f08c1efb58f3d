"""`illume demo`: ShapesWorld data, every stage trained, evaluated, reported (see illume.demo)."""

from __future__ import annotations

import argparse

# The default demo's wall time rests on bf16 matrix units (illume_trainer.precision): measured at
# 14 min 34 s on a 2-core EPYC with AVX512-BF16, and 38 min 4 s and 49 min 55 s on two 2-core
# EPYCs with AVX2 only, where the MLLM stages train in float32 (those CPUs are also 2-3x slower in
# float32: the detokenizer took 1,291 s and 1,610 s against 585; benchmarks/RESULTS.md).
SLOW_CPU_NOTE = (
    "note: this CPU has no bf16 matrix units (AVX512-BF16 or AMX), so the MLLM stages train in "
    "float32: the default demo took 38-50 min on 2 cores of such CPUs, against 15 with them"
)


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
        help="the chain to run: a shipped one (default: about 15 min on 2 CPU cores with bf16 "
        "units, 38-50 without, from the shipped encoder; scratch: the encoder trained too; full: "
        "the benchmark chain, sized for an hour with bf16 units; smoke: seconds, plumbing only) or a chain YAML file (recipes/shapes/chains/*.yaml)",
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
    from illume_trainer.precision import cpu_has_bf16_units

    if not cpu_has_bf16_units():
        print(SLOW_CPU_NOTE, flush=True)
    metrics = run_demo(args.out, chain)
    out = Path(args.out).resolve()
    print(
        f"report: {out / 'report.html'}\nmetrics: {out / 'metrics.json'}\npipeline: {out / 'pipeline'}"
    )
    print(f'try: illume generate --model {out / "pipeline"} "a red circle above a blue square"')
    print(headline_table(metrics))
    print(summary_line(metrics))
    return 0
