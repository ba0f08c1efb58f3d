"""`illume generate`, `illume answer`, `illume edit`: a trained pipeline directory at work."""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def add_placement(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype: where the pipeline runs and in what precision."""
    parser.add_argument(
        "--device",
        default="auto",
        help="where the pipeline runs: cpu, cuda, cuda:N (default auto: cuda when there is one)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="the weights' precision (default auto: bfloat16 on CUDA, float32 on the CPU)",
    )


def placement(args: argparse.Namespace):
    """(device, dtype) of --device and --dtype, "auto" resolved; a device that is not here is a
    UsageError before anything loads."""
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {args.device}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: this machine has no CUDA GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {args.device}: there are {torch.cuda.device_count()} CUDA devices"
        )
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: illume runs on cpu or cuda")
    name = args.dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, name)


def _sampling(parser: argparse.ArgumentParser, edits: bool = False) -> None:
    # an edit draws at the pipeline's edit guidance and temperature where it has them
    default = (
        "edit_{0} in generation_config.json, else its {0}"
        if edits
        else "{0} in generation_config.json"
    )
    parser.add_argument(
        "--model", required=True, help="pipeline directory (e.g. DEMO_OUT/pipeline)"
    )
    add_placement(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the drawing (the same seed draws the same image; with --prompts, row i "
        "draws with seed + i)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="CFG scale of the vision tokens, >= 0 (1: none; default: the pipeline's "
        + default.format("guidance")
        + ")",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="of the vision tokens, >= 0 (0: greedy; default: the pipeline's "
        + default.format("temperature")
        + ")",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="draw among the k likeliest codes (default: the pipeline's generation_config.json, else all)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="draw among the likeliest codes holding this much probability, in (0, 1] "
        "(default: the pipeline's generation_config.json, else 1)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="detokenizer denoising steps (default: the pipeline's generation_config.json)",
    )
    parser.add_argument(
        "--decoding",
        default=None,
        choices=("plain", "sjd"),
        help="vision tokens one forward pass each (plain) or by speculative Jacobi decoding (sjd: "
        "the same distribution in fewer passes; not with --runtime reference) (default: the "
        "pipeline's generation_config.json, else plain)",
    )
    parser.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "reference", "onnx", "onnx-tensorrt", "tensorrt"),
        help="what draws the vision tokens (same codes for the same seed on a CPU, but from an "
        "export with --decoder-weights int8/int4); onnx (ONNX "
        "Runtime), onnx-tensorrt (its TensorRT provider) and tensorrt (native TensorRT engines) "
        "run the graphs of --onnx, exported into MODEL/onnx when not given",
    )
    parser.add_argument("--onnx", default=None, help="an `illume export` directory")


def register(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="text to image with a trained pipeline")
    _sampling(generate)
    generate.add_argument(
        "prompt", nargs="?", help='e.g. "a red circle above a blue square" (or --prompts FILE)'
    )
    generate.add_argument(
        "--prompts",
        default=None,
        help="a file of prompts instead: GenEval's evaluation_metadata.jsonl (a JSON object with "
        '"prompt" per line) or plain text (one per line); --out gets GenEval\'s layout, '
        "OUT/00000/metadata.jsonl + samples/0000.png, and a stopped run resumes where it stopped",
    )
    generate.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="with --prompts: prompts drawn together (default 4)",
    )
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    generate.add_argument(
        "--best-of",
        type=int,
        default=None,
        help="draw N candidates per image and keep the one the model judges best "
        "(default: the pipeline's generation_config.json, else 1)",
    )
    generate.add_argument(
        "--out",
        default="generated",
        help="folder for the PNGs (new or empty, or with --prompts one to resume; default "
        "./generated), or one drawing's file name ending in .png",
    )
    generate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier `illume generate` --out (with --prompts: draw every prompt again)",
    )
    generate.set_defaults(handler=_generate)

    answer = commands.add_parser("answer", help="answer a question about an image")
    answer.add_argument("--model", required=True, help="pipeline directory")
    add_placement(answer)
    answer.add_argument("image", help="the image file (PNG, JPEG, ...)")
    answer.add_argument("question", help='e.g. "How many circles are there?"')
    answer.set_defaults(handler=_answer)

    edit = commands.add_parser("edit", help="edit an image by an instruction")
    _sampling(edit, edits=True)
    edit.add_argument("image", help="the image file to edit (PNG, JPEG, ...)")
    edit.add_argument("instruction", help='e.g. "change the red circle to green"')
    edit.add_argument("--out", default="edited.png", help="the PNG to write (default edited.png)")
    edit.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    edit.set_defaults(handler=_edit)

    export = commands.add_parser(
        "export", help="ONNX graphs of a pipeline (tokenizer, MLLM prefill/decode, U-Net step)"
    )
    export.add_argument("--model", required=True, help="pipeline directory")
    export.add_argument("--out", required=True, help="folder for the graphs and manifest.json")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    export.add_argument(
        "--portable",
        action="store_true",
        help="standard ONNX operators only, for TensorRT (default: the decoder's attention as "
        "ONNX Runtime's fused kernels)",
    )
    export.add_argument(
        "--decoder-weights",
        choices=["float32", "int8", "int4"],
        default="float32",
        help="the language model's layer weights: float32 (default; the PyTorch model's codes), "
        "or int8 / int4 weight-only (ONNX Runtime's MatMulNBits: faster drawing on a CPU, "
        "other codes for a seed; see RESULTS.md for the score difference)",
    )
    export.set_defaults(handler=_export)


class UsageError(ValueError):
    """A command line's value is wrong: `illume: error: ...`, exit 2, before anything loads."""


def _check_args(args: argparse.Namespace) -> None:
    """Every number and path of the command line, before the model loads (seconds) or anything
    is drawn (more): a wrong one is one line, not a traceback after the work."""
    from illume_mllm import check_sampling

    try:
        check_sampling(
            guidance=args.guidance if getattr(args, "guidance", None) is not None else 1.0,
            temperature=args.temperature if getattr(args, "temperature", None) is not None else 1.0,
            top_k=getattr(args, "top_k", None),
            top_p=getattr(args, "top_p", None),
        )
    except ValueError as err:
        raise UsageError(f"--{str(err).replace('_', '-')}") from None
    if getattr(args, "seed", None) is not None and not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    for name in ("num_images", "steps", "best_of", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such pipeline directory")
    placement(args)


def _check_out_folder(out: Path, overwrite: bool) -> None:
    from illume_core import check_replaceable

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out} is not empty; name a new folder, or pass --overwrite")
        try:
            check_replaceable(out, GENERATED_KIND)
        except FileExistsError as err:
            raise UsageError(f"--out: {err}") from None


def _check_out_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name a .png file")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; name a new file, or pass --overwrite")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")


#: What `illume generate` records its output folder as (see illume_core.atomic_directory).
GENERATED_KIND = "generated-images"


def _load(args: argparse.Namespace, edits: bool = False):
    """The pipeline with the command line's sampling settings (`edits`: --guidance and
    --temperature set the edit guidance and temperature, which edits draw at)."""
    from illume.pipeline import IllumePipeline

    pipe = IllumePipeline.from_pretrained(args.model, *placement(args))
    prefix = "edit_" if edits else ""
    for field, value in (
        (prefix + "guidance", getattr(args, "guidance", None)),
        (prefix + "temperature", getattr(args, "temperature", None)),
        ("top_k", getattr(args, "top_k", None)),
        ("top_p", getattr(args, "top_p", None)),
        ("steps", getattr(args, "steps", None)),
        ("decoding", getattr(args, "decoding", None)),
    ):
        if value is not None:
            setattr(pipe.sampling, field, value)
    if hasattr(args, "runtime"):
        pipe.use_runtime(args.runtime, args.onnx)
    return pipe


def _generate(args: argparse.Namespace) -> int:
    from illume_core import atomic_directory

    if (args.prompt is None) == (args.prompts is None):
        raise UsageError("give a prompt, or --prompts FILE, not both")
    _check_args(args)
    out = Path(args.out)
    if out.suffix.lower() == ".png":  # one drawing, named as `illume edit --out` names its file
        if args.prompts is not None or args.num_images != 1:
            raise UsageError(
                f"--out {out} names one PNG; with {'--prompts' if args.prompts else '--num-images'}"
                " name a folder"
            )
        return _generate_one(args, out)
    if args.prompts is not None:
        return _generate_file(args)
    _check_out_folder(out, args.overwrite)
    pipe = _load(args)
    with _working(f"drawing {args.num_images} image(s)"):
        images = pipe.generate_image(
            args.prompt, num_images=args.num_images, seed=args.seed, best_of=args.best_of
        )
    # Written whole into a folder of their own, then swapped in: two runs into one --out never
    # mix their images, and a crash leaves no half of a run behind.
    with atomic_directory(out, GENERATED_KIND) as tmp:
        for i, image in enumerate(images):
            (tmp / f"{i:04d}.png").write_bytes(_png(image))
        _check_out_folder(out, args.overwrite)  # another run may have filled it meanwhile
    for i in range(len(images)):
        print(out / f"{i:04d}.png")
    return 0


def _generate_one(args: argparse.Namespace, out: Path) -> int:
    from illume_core import atomic_write_bytes

    _check_out_file(out, args.overwrite)
    pipe = _load(args)
    with _working("drawing 1 image"):
        (image,) = pipe.generate_image(args.prompt, seed=args.seed, best_of=args.best_of)
    atomic_write_bytes(out, _png(image))
    print(out)
    return 0


#: What `illume generate --prompts` records its output folder, and each prompt's, as.
GENEVAL_KIND = "geneval-images"
GENEVAL_PROMPT_KIND = "geneval-prompt"


def _read_prompts(path: Path) -> list[dict]:
    """A prompts file as GenEval metadata rows ({"prompt": ..., more kept as they are})."""
    from illume_core import read_jsonl, read_text

    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    try:
        if path.suffix == ".jsonl":
            rows = read_jsonl(path)
        else:
            rows = [
                {"prompt": line.strip()} for line in read_text(path).splitlines() if line.strip()
            ]
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts: {err}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise UsageError(
                f'--prompts {path}, row {number}: a JSON object with a "prompt" string'
            )
    if not rows:
        raise UsageError(f"--prompts {path} holds no prompts")
    return rows


def _generate_file(args: argparse.Namespace) -> int:
    """GenEval's layout: OUT/<index:05d>/metadata.jsonl (the prompt's row) and samples/<k:04d>.png.
    Prompt i is drawn with seed --seed + i, so its images do not depend on the batch it was drawn
    in: a resumed run writes what an uninterrupted one would have. Each prompt's folder appears
    whole or not at all."""
    import json

    from rich.progress import Progress

    from illume_core import OWNER_MARKER, atomic_directory, check_replaceable, directory_owner

    rows = _read_prompts(Path(args.prompts))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder")
    try:
        check_replaceable(out, GENEVAL_KIND)
    except FileExistsError as err:
        raise UsageError(f"--out: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    if directory_owner(out) != GENEVAL_KIND:
        (out / OWNER_MARKER).write_text(
            json.dumps({"written_by": "illume", "kind": GENEVAL_KIND}) + "\n"
        )

    def done(i: int) -> bool:
        folder = out / f"{i:05d}"
        if args.overwrite or not (folder / "metadata.jsonl").is_file():
            return False
        if json.loads((folder / "metadata.jsonl").read_text()) != rows[i]:
            raise UsageError(
                f"--out {out}/{i:05d} holds another prompt than row {i + 1} of --prompts: "
                "name a new --out, or pass --overwrite"
            )
        return len(list((folder / "samples").glob("*.png"))) == args.num_images

    todo = [i for i in range(len(rows)) if not done(i)]
    pipe = _load(args)
    with Progress() as progress:
        bar = progress.add_task("drawing", total=len(rows), completed=len(rows) - len(todo))
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            images = pipe.generate_image(
                [rows[i]["prompt"] for i in batch],
                num_images=args.num_images,
                seed=[args.seed + i for i in batch],
                best_of=args.best_of,
            )
            for k, i in enumerate(batch):
                with atomic_directory(out / f"{i:05d}", GENEVAL_PROMPT_KIND) as tmp:
                    (tmp / "metadata.jsonl").write_text(json.dumps(rows[i]) + "\n")
                    (tmp / "samples").mkdir()
                    drawn = images[k * args.num_images : (k + 1) * args.num_images]
                    for j, image in enumerate(drawn):
                        (tmp / "samples" / f"{j:04d}.png").write_bytes(_png(image))
                progress.advance(bar)
    print(f"{out}: {len(rows)} prompts, {len(todo)} drawn now, {args.num_images} images each")
    return 0


def _answer(args: argparse.Namespace) -> int:
    from illume_core import load_image

    _check_args(args)
    image = load_image(args.image)  # a bad image is refused before the model loads
    print(_load(args).answer(image, args.question))
    return 0


def _edit(args: argparse.Namespace) -> int:
    from illume_core import atomic_write_bytes, load_image

    _check_args(args)
    _check_out_file(Path(args.out), args.overwrite)
    source = load_image(args.image)
    pipe = _load(args, edits=True)
    with _working("editing"):
        image = pipe.edit(source, args.instruction, seed=args.seed)
    atomic_write_bytes(args.out, _png(image))
    print(args.out)
    return 0


def _working(what: str):
    """A spinner on stderr while the model works (nothing when stderr is not a terminal)."""
    from rich.console import Console

    return Console(stderr=True).status(f"{what}...")


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _export(args: argparse.Namespace) -> int:
    from illume_runtime import export_pipeline
    from illume_runtime.export import check_export_options

    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such pipeline directory")
    try:
        check_export_options(args.portable, args.decoder_weights)
    except ValueError as err:
        raise UsageError(str(err)) from None
    manifest = export_pipeline(
        args.model,
        args.out,
        verify=not args.no_verify,
        portable=args.portable,
        decoder_weights=args.decoder_weights,
    )
    for name, spec in manifest["graphs"].items():
        print(f"{name:<18} {Path(args.out) / spec['file']}")
    return 0
