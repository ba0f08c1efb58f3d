"""`illume generate`, `illume answer`, `illume edit`: a trained pipeline directory at work."""

from __future__ import annotations

import argparse
from pathlib import Path


def _sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="pipeline directory (e.g. DEMO_OUT/pipeline)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance", type=float, default=None, help="CFG scale of the vision tokens"
    )
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="detokenizer denoising steps")
    parser.add_argument(
        "--runtime", default="torch", choices=("torch", "reference", "onnx", "tensorrt"),
        help="what draws the vision tokens (same codes for the same seed on a CPU); onnx and "
        "tensorrt run the graphs of --onnx, exported into MODEL/onnx when not given",
    )  # fmt: skip
    parser.add_argument("--onnx", default=None, help="an `illume export` directory")


def register(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="text to image with a trained pipeline")
    _sampling(generate)
    generate.add_argument("prompt", help='e.g. "a red circle above a blue square"')
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument(
        "--best-of", type=int, default=None,
        help="draw N candidates per image and keep the one the model judges best "
        "(default: the pipeline's sampling.json, else 1)",
    )  # fmt: skip
    generate.add_argument("--out", default="generated", help="folder for the PNGs")
    generate.set_defaults(handler=_generate)

    answer = commands.add_parser("answer", help="answer a question about an image")
    answer.add_argument("--model", required=True, help="pipeline directory")
    answer.add_argument("image")
    answer.add_argument("question")
    answer.set_defaults(handler=_answer)

    edit = commands.add_parser("edit", help="edit an image by an instruction")
    _sampling(edit)
    edit.add_argument("image")
    edit.add_argument("instruction", help='e.g. "change the red circle to green"')
    edit.add_argument("--out", default="edited.png")
    edit.set_defaults(handler=_edit)

    export = commands.add_parser(
        "export", help="ONNX graphs of a pipeline (tokenizer, MLLM prefill/decode, U-Net step)"
    )
    export.add_argument("--model", required=True, help="pipeline directory")
    export.add_argument("--out", required=True, help="folder for the graphs and manifest.json")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    export.set_defaults(handler=_export)


def _load(args: argparse.Namespace):
    from illume.pipeline import IllumePipeline

    pipe = IllumePipeline.from_pretrained(args.model)
    for field, value in (("guidance", getattr(args, "guidance", None)), ("temperature", getattr(args, "temperature", None)),
                         ("top_k", getattr(args, "top_k", None)), ("steps", getattr(args, "steps", None))):  # fmt: skip
        if value is not None:
            setattr(pipe.sampling, field, value)
    if hasattr(args, "runtime"):
        pipe.use_runtime(args.runtime, args.onnx)
    return pipe


def _generate(args: argparse.Namespace) -> int:
    from illume_core import atomic_write_bytes

    pipe = _load(args)
    out = Path(args.out)
    for i, image in enumerate(
        pipe.generate_image(
            args.prompt, num_images=args.num_images, seed=args.seed, best_of=args.best_of
        )
    ):
        atomic_write_bytes(out / f"{i:04d}.png", _png(image))
        print(out / f"{i:04d}.png")
    return 0


def _answer(args: argparse.Namespace) -> int:
    from illume_core import load_image

    print(_load(args).answer(load_image(args.image), args.question))
    return 0


def _edit(args: argparse.Namespace) -> int:
    from illume_core import atomic_write_bytes, load_image

    image = _load(args).edit(load_image(args.image), args.instruction, seed=args.seed)
    atomic_write_bytes(args.out, _png(image))
    print(args.out)
    return 0


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _export(args: argparse.Namespace) -> int:
    from illume_runtime import export_pipeline

    manifest = export_pipeline(args.model, args.out, verify=not args.no_verify)
    for name, spec in manifest["graphs"].items():
        print(f"{name:<18} {Path(args.out) / spec['file']}")
    return 0
