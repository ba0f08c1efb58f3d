"""`illume serve --ray`: the app as a Ray Serve deployment of two replicas on a local Ray instance,
each with its own copy of the model, reached through Ray's HTTP proxy by the `openai` client."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from illume.serve import ServeSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a local Ray cluster and two replicas: about a minute
def test_two_ray_replicas_serve_the_openai_api(pipeline_dir):
    ray = pytest.importorskip("ray")
    from openai import OpenAI
    from ray import serve

    from illume.serve.ray_serve import run

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(pipeline_dir, ServeSettings(), port=port, blocking=False, replicas=2,
            cpus_per_replica=0.5)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        pids, deadline = set(), time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:  # the proxy spreads requests
            pids.add(httpx.get(url + "/health", timeout=30).json()["pid"])
        assert len(pids) == 2, pids
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        first = client.images.generate(prompt="a red circle", extra_body={"seed": 3})
        second = client.images.generate(prompt="a red circle", extra_body={"seed": 3})
        assert first.data[0].seed == second.data[0].seed == 3
        bad = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "colour": 1})
        assert bad.status_code == 400 and "unknown field" in bad.json()["error"]["message"]
    finally:
        serve.shutdown()
        ray.shutdown()
