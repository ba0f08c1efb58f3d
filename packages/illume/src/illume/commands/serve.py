"""`illume serve`: a trained pipeline behind an OpenAI-compatible HTTP API (illume.serve)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a pipeline over HTTP (OpenAI's images and chat API, a web page at /)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model", required=True, help="pipeline directory (e.g. DEMO_OUT/pipeline)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "reference", "onnx", "tensorrt"),
        help="what draws the vision tokens",
    )
    serve.add_argument("--onnx", default=None, help="an `illume export` directory")
    serve.add_argument("--max-batch", type=int, default=16, help="images in one batch at most")
    serve.add_argument(
        "--batch-window-ms", type=float, default=20.0, help="how long a batch waits for more"
    )
    serve.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting at most (then 429)"
    )
    serve.add_argument(
        "--timeout-s", type=float, default=120.0, help="a request's deadline (then 504)"
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest request body (then 413)"
    )
    serve.add_argument("--model-name", default="illume", help="the model id /v1/models reports")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .tasks import UsageError

    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such pipeline directory")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    from pydantic import ValidationError

    from ..serve import ServeSettings, create_app

    try:
        settings = ServeSettings(
            max_batch=args.max_batch,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            timeout_s=args.timeout_s,
            max_body_bytes=int(args.max_body_mb * 2**20),
            model_name=args.model_name,
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    import uvicorn

    from ..pipeline import IllumePipeline

    pipe = IllumePipeline.from_pretrained(args.model)
    pipe.use_runtime(args.runtime, args.onnx)
    uvicorn.run(create_app(pipe, settings), host=args.host, port=args.port, log_level="info")
    return 0
