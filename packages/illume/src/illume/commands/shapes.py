"""`illume shapes make` and `illume shapes score`: ShapesWorld data and exact scoring."""

from __future__ import annotations

import argparse
import json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("shapes", help="ShapesWorld: make datasets, score images")
    sub = parser.add_subparsers(dest="shapes_command", metavar="ACTION", required=True)

    make = sub.add_parser("make", help="write a ShapesWorld dataset (train / validation / heldout)")
    make.add_argument("--out", required=True, help="folder to write into")
    make.add_argument("--n", type=int, default=10_000, help="training scenes (default 10000)")
    make.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="validation and heldout scenes each (default max(100, n/10))",
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    make.set_defaults(handler=_make)

    score = sub.add_parser(
        "score", help="score a GenEval-style sample folder with the exact scorer"
    )
    score.add_argument("samples", help="folder of <index>/metadata.jsonl + <index>/samples/*.png")
    score.add_argument(
        "--geneval-rules",
        action="store_true",
        help="GenEval's lenient rules instead of exact scenes",
    )
    score.add_argument("--results", help="also write per-image results as JSONL here")
    score.set_defaults(handler=_score)


def _make(args: argparse.Namespace) -> int:
    from illume_eval.shapes import write_dataset

    info = write_dataset(args.out, args.n, seed=args.seed, size=args.size, n_eval=args.n_eval)
    print(json.dumps(info["counts"]))
    return 0


def _score(args: argparse.Namespace) -> int:
    from illume_core import atomic_write_text
    from illume_eval.interop import score_geneval_folder

    rows, summary = score_geneval_folder(args.samples, strict=not args.geneval_rules)
    if args.results:
        atomic_write_text(args.results, "".join(json.dumps(r) + "\n" for r in rows))
    for key, value in summary.items():
        print(f"{key:>14}: {value:.4f}")
    print(json.dumps(summary))
    return 0
