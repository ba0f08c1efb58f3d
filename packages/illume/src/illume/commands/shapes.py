"""`illume shapes make`, `score` and `audit`: ShapesWorld data, exact scoring, and what an
evaluation shares with training."""

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
    make.add_argument("--seed", type=int, default=0, help="the dataset's seed")
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

    audit = sub.add_parser(
        "audit",
        help="what the evaluation splits share with training, and the lookup baseline",
        description="Per split and category: the share of evaluation prompts whose text, spec, "
        "exact prompt and object layout occur in training as a drawing request, and the lookup "
        "baseline's score (a training image drawn for the same spec); per question type, POPE "
        "type and edit kind, the share asked of the same layout in training. Prints tables, then "
        "one JSON line.",
    )
    audit.add_argument(
        "data", help="a ShapesWorld dataset folder (with train/, validation/, heldout/)"
    )
    audit.set_defaults(handler=_audit)


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


def _audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from illume_eval.shapes.audit import audit, audit_table

    if not (Path(args.data) / "train" / "t2i.json").is_file():
        print(
            f"illume shapes audit: error: {args.data} holds no ShapesWorld dataset (no train/t2i.json); "
            "make one with `illume shapes make --out DIR`"
        )
        return 2
    report = audit(args.data)
    print(audit_table(report))
    unseen = report["validation"]["t2i"]["unseen"]["all"]
    heldout = report["heldout"]["t2i"]["all"]["all"]
    print(
        f"check: unseen validation prompts with a spec drawn in training: {unseen['spec']:.3f}, "
        f"lookup baseline {unseen['lookup']:.3f}; held-out compositions: {heldout['spec']:.3f}, "
        f"{heldout['lookup']:.3f} (0 by construction)"
    )
    print(json.dumps(report))
    return 0 if unseen["spec"] == 0 and heldout["spec"] == 0 else 1
