"""The service under attack (issue #13), as a real `vitkit serve` process on a local port: in one run it
survives 2,000 half-open connections, 32 parallel 19 MB bodies, a thin strip and an ICO bomb, keeps
answering valid requests, answers every error as JSON, returns near its starting memory, and stops on
SIGTERM. In process: a model that outputs NaN gets a JSON 500 that says so, and a dead engine thread makes
/readyz unready and requests fail fast with 503.

Run:  .venv/bin/python -m pytest tests/test_service_hostile.py -q
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import hostile
from service_support import DIGITS, image_bytes, load_digits
from vitkit.service.app import create_app
from vitkit.service.engine import Engine

HALF_OPEN = 2000
HEADER_TIMEOUT = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@pytest.fixture(scope="module")
def server():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--model", str(DIGITS), "--port", str(port),
                                "--header-timeout", str(HEADER_TIMEOUT), "--log-level", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                                                                                       "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"the server did not start: {process.stderr.read().decode()[-2000:]}")
    yield process, url
    if process.poll() is None:
        process.kill()


def classify_ok(url: str) -> bool:
    response = httpx.post(f"{url}/v1/classify", files={"file": ("a.png", image_bytes(1))}, timeout=30)
    return response.status_code == 200 and len(response.json()["top_k"]) > 0


@pytest.mark.slow
def test_the_server_survives_an_attack_and_keeps_serving(server, tmp_path, report):
    process, url = server
    assert classify_ok(url)
    start_mb = rss_mb(process.pid)

    # half-open connections: headers that never end
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(HALF_OPEN):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    began = time.monotonic()
    assert classify_ok(url), "valid requests are answered beside the half-open connections"
    closed = 0
    for s in sockets:
        s.settimeout(max(0.1, HEADER_TIMEOUT + 5 - (time.monotonic() - began)))
        try:
            closed += s.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed += 0
        finally:
            s.close()
    dropped_s = time.monotonic() - began
    assert closed == HALF_OPEN, f"{HALF_OPEN - closed} half-open connections were held"

    # 32 parallel 19 MB JSON bodies (random bytes, so each is a 422 when it is read at all)
    body = b'{"image": "' + base64.b64encode(os.urandom(14 * 2**20)) + b'"}'

    def post(_):
        return httpx.post(f"{url}/v1/classify", content=body, headers={"Content-Type": "application/json"},
                          timeout=120)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, range(32)))
    statuses = sorted(a.status_code for a in answers)
    assert all(a.headers["content-type"] == "application/json" for a in answers)
    assert set(statuses) <= {400, 413, 422, 503} and 503 in statuses, statuses
    peak_bodies = rss_mb(process.pid, "VmHWM")

    # a strip and a decoding bomb
    strip = hostile.strip(tmp_path / "strip.png").read_bytes()
    bomb = hostile.ico_bomb(tmp_path / "bomb.ico").read_bytes()
    before = rss_mb(process.pid, "VmHWM")
    assert httpx.post(f"{url}/v1/classify", files={"file": ("s.png", strip)}, timeout=30).status_code == 200
    refused = httpx.post(f"{url}/v1/classify", files={"file": ("b.ico", bomb)}, timeout=30)
    assert refused.status_code == 422 and "ICO" in refused.json()["detail"]
    grew = rss_mb(process.pid, "VmHWM") - before

    assert classify_ok(url)
    time.sleep(1)
    end_mb = rss_mb(process.pid)
    report(f"service under attack: {HALF_OPEN} half-open connections all dropped after {dropped_s:.1f} s "
           f"(header timeout {HEADER_TIMEOUT:g} s); 32 x 19 MB bodies -> {statuses.count(503)} x 503, "
           f"{len(statuses) - statuses.count(503)} read (peak RSS {peak_bodies:.0f} MB); strip + ICO bomb "
           f"{grew:+.0f} MB peak; RSS {start_mb:.0f} MB at start, {end_mb:.0f} MB at the end")
    assert grew < 300 and end_mb < start_mb + 150

    process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
    assert process.wait(timeout=20) in (0, -signal.SIGTERM), "SIGTERM stops the server"


# ----------------------------------------------------------------------------- in process
def test_a_model_that_outputs_nan_gets_a_json_500(tmp_path):
    model = load_digits()
    with torch.no_grad():
        model.net.head.weight.fill_(float("nan"))
    with TestClient(create_app(Engine(model, max_wait_ms=0))) as client:
        answer = client.post("/v1/classify", files={"file": ("a.png", image_bytes(0))})
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert "non-finite" in answer.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_a_dead_engine_thread_is_unready_and_fails_fast(monkeypatch):
    engine = Engine(load_digits(), max_wait_ms=0)
    with TestClient(create_app(engine)) as client:
        assert client.get("/readyz").status_code == 200

        def die(batch):
            raise RuntimeError("simulated crash of the worker")

        monkeypatch.setattr(engine, "_run", die)
        first = client.post("/v1/classify", files={"file": ("a.png", image_bytes(0))})
        assert first.status_code == 503 and "died" in first.json()["detail"]  # the request in flight: at once
        engine._thread.join(timeout=10)
        assert not engine._thread.is_alive()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        began = time.monotonic()
        answer = client.post("/v1/classify", files={"file": ("a.png", image_bytes(0))})
        assert answer.status_code == 503 and "died" in answer.json()["detail"] and time.monotonic() - began < 2
