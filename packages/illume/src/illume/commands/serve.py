"""`illume serve`: a trained pipeline behind an OpenAI-compatible HTTP API (illume.serve)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .tasks import add_placement, placement


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a pipeline over HTTP (OpenAI's images and chat API, a web page at /)",
    )
    serve.add_argument("--model", required=True, help="pipeline directory (e.g. DEMO_OUT/pipeline)")
    add_placement(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "reference", "onnx", "onnx-tensorrt", "tensorrt"),
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
    serve.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        help="largest input image, width x height (then 400)",
    )
    serve.add_argument("--model-name", default="illume", help="the model id /v1/models reports")
    ray = serve.add_argument_group(
        "Ray Serve (pip install 'illume[ray]'; a cluster through RAY_ADDRESS, else a local Ray)"
    )
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment")
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each with the model")
    ray.add_argument(
        "--min-replicas",
        type=int,
        default=None,
        help="autoscale from this many (with --max-replicas)",
    )
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many")
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=16.0,
        help="autoscaling: requests in flight per replica that Ray aims for",
    )
    ray.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="CPUs Ray gives each replica"
    )
    ray.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="GPUs Ray gives each replica (with --device cuda)",
    )
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
            max_image_pixels=args.max_image_pixels,
            model_name=args.model_name,
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    device, dtype = placement(args)
    if args.ray:
        return _serve_ray(args, settings)
    import uvicorn

    from ..pipeline import IllumePipeline

    pipe = IllumePipeline.from_pretrained(args.model, device, dtype)
    pipe.use_runtime(args.runtime, args.onnx)
    uvicorn.run(create_app(pipe, settings), host=args.host, port=args.port, log_level="info")
    return 0


def _serve_ray(args: argparse.Namespace, settings) -> int:
    from .tasks import UsageError

    if (args.min_replicas is None) != (args.max_replicas is None):
        raise UsageError(
            "give --min-replicas and --max-replicas together (autoscaling), or neither"
        )
    if args.replicas < 1 or (
        args.min_replicas is not None and not 0 <= args.min_replicas <= args.max_replicas
    ):
        raise UsageError("--replicas must be >= 1, and 0 <= --min-replicas <= --max-replicas")
    try:
        from ..serve.ray_serve import run
    except ImportError:
        raise UsageError("--ray needs Ray Serve: pip install 'illume[ray]'") from None
    autoscaling = None
    if args.min_replicas is not None:
        autoscaling = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    run(
        args.model, settings, host=args.host, port=args.port, replicas=args.replicas,
        autoscaling=autoscaling, cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica, runtime=args.runtime, onnx=args.onnx,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    return 0
