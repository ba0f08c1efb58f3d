"""`illume serve` under load on 127.0.0.1: latency, throughput, batching's gain, overload, memory.

One server process (`illume serve --model DIR`, started here), driven by asyncio httpx clients:
1. For 1, 4, 16 and 64 concurrent clients, each sending text-to-image requests (one image, its own
   seed, prompts from validation's unseen ones when DIR has ShapesWorld data beside it, else a
   fixed list) until `--requests` are answered (at least as many as clients, or the level has
   fewer clients at work than it says): p50 / p95 latency and images per second, with
   batching (the server's defaults) and one at a time (`--max-batch 1`, the same model).
2. Overload: a deliberately small queue (2) and 64 clients: every request must be answered 200 or
   refused 429, none lost, no 5xx.
3. Soak: `--soak-s` seconds (default 600) at 16 clients, in rounds of 16 requests; the server's
   resident memory (RSS, from /proc) sampled after each round: growth from the first sample after
   the first minute to the last.

Prints tables, then one JSON object on its last line.
Run: .venv/bin/python benchmarks/serve_load.py --model DEMO_OUT/pipeline [--requests 64] [--soak-s 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = [
    "a red circle above a blue square",
    "two green triangles",
    "a yellow square to the left of a purple circle",
    "three blue circles",
    "a cyan triangle below a red square",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`illume serve` in a subprocess, for the length of a `with`."""

    def __init__(self, model: str, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "illume.cli", "serve", "--model", model,
                        "--port", str(self.port), *flags]  # fmt: skip

    def __enter__(self):
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("the server did not become ready in 120 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, clients: int, requests: int, prompts: list[str]) -> dict:
    """`clients` concurrent loops sending requests until `requests` are done; statuses, latencies."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for k in counter:
            body = {"prompt": prompts[k % len(prompts)], "seed": k}
            start = time.perf_counter()
            try:
                response = await http.post("/v1/images/generations", json=body)
                status = response.status_code
            except httpx.HTTPError:
                status = -1  # no answer at all: a lost request
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*[client(http) for _ in range(clients)])
    seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": requests,
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "images_per_s": round(statuses.get(200, 0) / seconds, 3),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
    }


def prompts_for(model: str) -> list[str]:
    """Validation's unseen prompts when the pipeline sits in a demo folder, else PROMPTS."""
    metadata = Path(model).parent / "data/shapes/validation/geneval_metadata.jsonl"
    if not metadata.is_file():
        return PROMPTS
    rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if r["tag"] in ("counting", "color_attr", "position")][:64]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="pipeline directory")
    parser.add_argument("--requests", type=int, default=64, help="requests per load level")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--soak-s", type=float, default=600.0)
    args = parser.parse_args()
    prompts = prompts_for(args.model)
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    for mode, flags in (("batched", ()), ("one at a time", ("--max-batch", "1"))):
        with Server(args.model, *flags) as server:
            for clients in levels:
                result = asyncio.run(load(server.url, clients, args.requests, prompts))
                rows.append({"mode": mode, **result})
                print(f"{mode:<14} {clients:>3} clients  {result['images_per_s']:>7.3f} img/s  "
                      f"p50 {result['p50_s']} s  p95 {result['p95_s']} s  {result['statuses']}",
                      flush=True)  # fmt: skip
    gain = {}
    for clients in levels:
        batched = next(r for r in rows if r["mode"] == "batched" and r["clients"] == clients)
        alone = next(r for r in rows if r["mode"] != "batched" and r["clients"] == clients)
        gain[clients] = round(batched["images_per_s"] / max(alone["images_per_s"], 1e-9), 2)

    with Server(args.model, "--max-queue", "2") as server:
        overload = asyncio.run(load(server.url, 64, 4 * args.requests, prompts))
    answered = sum(overload["statuses"].values())
    overload_ok = set(overload["statuses"]) <= {200, 429} and answered == 4 * args.requests

    soak = {}
    if args.soak_s > 0:
        with Server(args.model) as server:
            samples, start = [], time.monotonic()
            while time.monotonic() - start < args.soak_s:
                asyncio.run(load(server.url, 16, 16, prompts))
                samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))
            after_warmup = [m for t, m in samples if t >= 60] or [m for _, m in samples]
            soak = {
                "seconds": round(time.monotonic() - start, 1),
                "rss_mb_first": after_warmup[0],
                "rss_mb_last": after_warmup[-1],
                "rss_growth": round(after_warmup[-1] / after_warmup[0] - 1, 4),
                "samples": samples,
            }

    print()
    print(
        f"{'clients':>8} {'batched img/s':>14} {'alone img/s':>12} {'gain':>6} {'p50 (b)':>8} {'p95 (b)':>8}"
    )
    for clients in levels:
        b = next(r for r in rows if r["mode"] == "batched" and r["clients"] == clients)
        a = next(r for r in rows if r["mode"] != "batched" and r["clients"] == clients)
        print(f"{clients:>8} {b['images_per_s']:>14.3f} {a['images_per_s']:>12.3f} "
              f"{gain[clients]:>6.2f} {b['p50_s']:>8} {b['p95_s']:>8}")  # fmt: skip
    print(f"overload (queue 2, 64 clients): {overload['statuses']}, all answered: {overload_ok}")
    if soak:
        print(f"soak {soak['seconds']} s at 16 clients: RSS {soak['rss_mb_first']} -> "
              f"{soak['rss_mb_last']} MB ({100 * soak['rss_growth']:+.1f}%)")  # fmt: skip
    print(json.dumps({
        "machine": f"{platform.machine()} {platform.python_version()} cpus={os.cpu_count()}",
        "model": str(args.model), "levels": rows, "batching_gain": gain,
        "overload": overload, "overload_ok": overload_ok, "soak": soak,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
