"""`illume serve --ray`: the same application as a Ray Serve deployment, for more than one machine.

Each replica is a Ray actor that loads the pipeline once and runs `create_app`'s FastAPI app
(batching, back-pressure and all, per replica); Ray's HTTP proxy spreads requests over the
replicas and, with autoscaling, adds or removes them by the requests each has in flight.

On a cluster: start Ray on every machine (`ray start --head` on one, `ray start --address
HEAD:6379` on the others), make the pipeline directory readable at the same path on each (a
shared file system, or copied), then on any of them

    RAY_ADDRESS=auto illume serve --model DIR --ray --min-replicas 1 --max-replicas 8 --host 0.0.0.0

Without RAY_ADDRESS, `--ray` starts a local Ray instance (what the tests do).
"""

from __future__ import annotations

import os
from typing import Any

from .app import ServeSettings


def illume_deployment(
    model: str | os.PathLike,
    settings: ServeSettings | None = None,
    replicas: int = 1,
    autoscaling: dict[str, Any] | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    runtime: str = "torch",
    onnx: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
):
    """A bound Ray Serve application of `replicas` replicas (or Ray's `autoscaling_config`, e.g.
    {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16}), each serving the
    pipeline at `model` (an absolute path every node can read) on `device` in `dtype` (as
    `illume serve --device/--dtype` takes them; "auto": resolved on the replica's own node)."""
    from ray import serve

    model = os.path.abspath(model)
    settings = settings or ServeSettings()

    def build():
        # runs on each replica: the model loads where it serves
        from argparse import Namespace

        from ..commands.tasks import placement
        from ..pipeline import IllumePipeline
        from .app import create_app

        pipe = IllumePipeline.from_pretrained(
            model, *placement(Namespace(device=device, dtype=dtype))
        )
        pipe.use_runtime(runtime, onnx)
        return create_app(pipe, settings)

    class IllumeReplica:
        """One copy of the served pipeline."""

    options: dict[str, Any] = {
        "name": "illume",
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # the app's own queue refuses what it cannot hold; Ray's should not hold more than it
        "max_ongoing_requests": settings.max_queue + settings.max_batch,
    }
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    return serve.deployment(serve.ingress(build)(IllumeReplica), **options).bind()


def run(
    model: str | os.PathLike,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = True,
    **deployment: Any,
):
    """Starts Ray (RAY_ADDRESS's cluster, else a local instance) and Serve's HTTP proxy on
    host:port, and deploys the application; blocks until interrupted unless `blocking` is False
    (then returns the ingress deployment's handle)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(
        illume_deployment(model, settings, **deployment),
        name="illume",
        route_prefix="/",
        blocking=blocking,
    )
