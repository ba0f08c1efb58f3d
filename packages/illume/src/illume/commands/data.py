"""`illume data pack`: a LLaVA-style conversation file and its images as streamable shards, each
image's tokenizer codes precomputed (illume_trainer.packing; read by illume_trainer.shards)."""

from __future__ import annotations

import argparse
import json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="training data at scale: pack shards")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pack = sub.add_parser(
        "pack",
        help="pack a conversation file and its images into shards",
        description="Writes SOURCE (a LLaVA-style .json / .jsonl) and the images it names as "
        "shards of --shard-size entries (WebDataset tar or Parquet) with a manifest.json (counts, "
        "bytes, SHA-256 of each shard). With --tokenizer every image's codes are stored and the "
        "tokenizer's fingerprint recorded: an MLLM stage with another tokenizer refuses them. "
        "Entries whose images cannot be read are skipped and counted. An interrupted run resumes "
        "at the first unwritten shard when run again. Train from the folder by listing it in a "
        "recipe's data.train in place of the file.",
    )
    pack.add_argument(
        "source", help="a LLaVA-style conversation file (.json or .jsonl), or a captions JSONL"
    )
    pack.add_argument("--out", required=True, help="an empty folder (or an unfinished pack's)")
    pack.add_argument("--tokenizer", help="a saved vision tokenizer: store every image's codes")
    pack.add_argument("--shard-size", type=int, default=1000, help="entries per shard")
    pack.add_argument("--format", choices=("tar", "parquet"), default="tar", help="shard files")
    pack.add_argument(
        "--pack-by-image",
        action="store_true",
        help="questions about the same images as one sample (trained as one masked sequence)",
    )
    pack.add_argument(
        "--captions",
        choices=("i2t", "t2i"),
        help='SOURCE is a captions JSONL ({"image", "text"} lines): pack each pair as a captioning '
        "(i2t) or a drawing-request (t2i) conversation",
    )
    pack.add_argument(
        "--prompt",
        help="with --captions: the instruction (t2i: with {caption}); default: ShapesWorld's "
        '"What does the image show?" / "Generate an image of {caption}."',
    )
    pack.set_defaults(handler=_pack)


def _pack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tasks import UsageError

    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    if not Path(args.source).is_file():
        raise UsageError(f"{args.source}: no such conversation file")
    if args.tokenizer and not (Path(args.tokenizer) / "config.json").is_file():
        raise UsageError(
            f"--tokenizer {args.tokenizer}: not a saved vision tokenizer (no config.json)"
        )
    if args.prompt and not args.captions:
        raise UsageError("--prompt is the instruction of packed captions: give --captions i2t|t2i")
    if args.captions == "t2i" and args.prompt and "{caption}" not in args.prompt:
        raise UsageError(f"--prompt for t2i needs a {{caption}} placeholder, got {args.prompt!r}")
    from illume_trainer.packing import pack_conversations

    manifest = pack_conversations(
        args.source,
        args.out,
        tokenizer=args.tokenizer,
        shard_size=args.shard_size,
        kind=args.format,
        pack_by_image=args.pack_by_image,
        captions_as=args.captions,
        prompt=args.prompt,
    )
    summary = {k: manifest[k] for k in ("samples", "skipped", "bytes")}
    summary["shards"] = len(manifest["shards"])
    summary["codes"] = manifest["tokenizer"] is not None
    print(f"packed {summary['samples']} samples into {summary['shards']} shards in {args.out}")
    if manifest["skipped"]:
        print(f"skipped {manifest['skipped']}: {'; '.join(manifest['skipped_examples'][:3])}")
    print(json.dumps(summary))
    return 0
