"""Load test of `vitkit serve` on loopback: the server runs in a subprocess (`python -m vitkit serve`),
`--concurrency` clients (asyncio + httpx, keep-alive) post the same image to /v1/classify until `--requests`
answers have come back, once with micro-batching (--max-batch 32) and once without (--max-batch 1).
Prints, per mode: requests, errors, throughput, p50/p95 latency, the mean model batch (from /metrics);
then the throughput ratio. Exits 1 if any request failed.

Try it:  python benchmarks/serve_load.py --model vitkit/assets/digits-vit --requests 2000 --concurrency 16
         python benchmarks/serve_load.py --arch deit_tiny_patch16_224 --image-size 96 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_args: list[str], max_batch: int, max_wait_ms: float, threads: int):
    """`python -m vitkit serve` on a free loopback port, ready (its /readyz answers 200) -> base URL."""
    port = free_port()
    command = [sys.executable, "-m", "vitkit", "serve", *model_args, "--port", str(port), "--max-batch",
               str(max_batch), "--max-wait-ms", str(max_wait_ms), "--threads", str(threads),
               "--queue-size", "1024", "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_S} s")


async def _load(url: str, image: bytes, requests: int, concurrency: int, warmup: int) -> dict:
    """`requests` posts by `concurrency` clients -> latencies (s) and error counts by kind."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        latencies: list[float] = []
        errors: Counter = Counter()
        todo = iter(range(warmup + requests))  # shared by the clients: each request is taken once

        async def client_loop() -> None:
            for n in todo:
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", files={"file": ("image.png", image, "image/png")})
                    if response.status_code != 200:
                        errors[f"HTTP {response.status_code}"] += 1
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                if n >= warmup:
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start  # includes the warm-up requests: small against the rest
        metrics = (await client.get("/metrics")).text
    return {"latencies": latencies, "errors": dict(errors), "wall_s": wall, "mean_batch": _mean_batch(metrics)}


def _mean_batch(metrics: str) -> float:
    found = dict(re.findall(r"^vitkit_batch_size_(sum|count) ([0-9.e+]+)$", metrics, re.MULTILINE))
    return float(found["sum"]) / float(found["count"])


def measure(model_args: list[str], image: bytes, max_batch: int, requests: int = 2000, concurrency: int = 16,
            max_wait_ms: float = 10.0, threads: int = 1, warmup: int = 64) -> dict:
    """One server run: throughput (req/s), p50/p95 latency (ms), errors, mean model batch."""
    with running_server(model_args, max_batch, max_wait_ms, threads) as url:
        result = asyncio.run(_load(url, image, requests, concurrency, warmup))
    latencies = np.array(result["latencies"]) * 1000
    return {"max_batch": max_batch, "requests": len(latencies), "concurrency": concurrency,
            "errors": sum(result["errors"].values()), "error_kinds": result["errors"],
            "req_s": (warmup + requests) / result["wall_s"], "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)), "mean_batch": result["mean_batch"]}


def compare(model_args: list[str], image: bytes, rounds: int = 1, **options) -> dict:
    """Micro-batching on (max_batch 32) and off (max_batch 1), alternated `rounds` times; the ratio is the
    median of the rounds' ratios (a busy neighbour slows one round, not the verdict)."""
    runs = {"on": [], "off": []}
    for _ in range(rounds):
        runs["on"].append(measure(model_args, image, max_batch=32, **options))
        runs["off"].append(measure(model_args, image, max_batch=1, **options))
    ratios = [on["req_s"] / off["req_s"] for on, off in zip(runs["on"], runs["off"])]
    return {"runs": runs, "ratios": ratios, "ratio": statistics.median(ratios),
            "errors": sum(r["errors"] for mode in runs.values() for r in mode)}


def posted_image(path: str | None, side: int = 96) -> bytes:
    """The posted file: `path`'s bytes, or a seeded random side x side PNG."""
    if path:
        return Path(path).read_bytes()
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def describe(run: dict) -> str:
    return (f"max-batch {run['max_batch']:>2}: {run['requests']} requests, {run['errors']} errors, "
            f"{run['req_s']:7.1f} req/s, p50 {run['p50_ms']:6.1f} ms, p95 {run['p95_ms']:6.1f} ms, "
            f"mean batch {run['mean_batch']:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="anything `vitkit serve --model` takes")
    parser.add_argument("--arch", help="architecture (alone: random weights)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--image", help="the image file to post (default: a random 96 x 96 PNG)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="the server model's CPU threads")
    parser.add_argument("--rounds", type=int, default=1, help="alternate on/off this many times")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args()
    model_args = [flag for name, value in (("--model", args.model), ("--arch", args.arch),
                                           ("--image-size", args.image_size)) if value for flag in (name, str(value))]
    result = compare(model_args, posted_image(args.image), args.rounds, requests=args.requests,
                     concurrency=args.concurrency, max_wait_ms=args.max_wait_ms, threads=args.threads)
    print(f"vitkit serve {' '.join(model_args)}: {args.concurrency} concurrent clients on loopback, "
          f"{os.cpu_count()} CPUs, model threads {args.threads}")
    for on, off, ratio in zip(result["runs"]["on"], result["runs"]["off"], result["ratios"]):
        print(f"  {describe(on)}\n  {describe(off)}\n  throughput ratio {ratio:.2f}x")
    print(f"micro-batching: {result['ratio']:.2f}x the throughput of batch-1 serving (median of {args.rounds}), "
          f"{result['errors']} errors")
    if args.json:
        print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
