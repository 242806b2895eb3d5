"""`vitkit serve`: the flags reach the engine, the app and uvicorn; a missing or mismatched index is a clear
error (exit 2) before anything listens. The server runner (vitkit.service.connections.run, uvicorn) is
replaced by a stub that keeps the app, which is then exercised with TestClient.

Run:  .venv/bin/python -m pytest tests/test_service_cli.py -q
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_support import DIGITS, image_bytes, load_digits, write_images

import vitkit.cli
from vitkit.index import ImageIndex
from vitkit.service import connections

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def serve(monkeypatch):
    """Runs `vitkit serve ARGS` -> (exit code, what the server runner was given)."""
    if "vitkit.service.cli" not in vitkit.cli.FEATURE_CLIS:
        monkeypatch.setattr(vitkit.cli, "FEATURE_CLIS", (*vitkit.cli.FEATURE_CLIS, "vitkit.service.cli"))
    ran = {}
    monkeypatch.setattr(connections, "run", lambda app, host, port, log_level, header_timeout_s: ran.update(
        app=app, host=host, port=port, log_level=log_level, header_timeout_s=header_timeout_s))

    def run(*args: str) -> tuple[int, dict]:
        return vitkit.cli.main(["serve", *args]), ran

    return run


def test_flags_reach_the_engine_the_app_and_uvicorn(serve, tmp_path):
    model = load_digits()
    index = ImageIndex.create(tmp_path / "db", model)
    index.add([str(p) for p in write_images(tmp_path / "photos", 3)], model)
    code, ran = serve("--model", str(DIGITS), "--index", str(tmp_path / "db"), "--port", "8123", "--max-batch", "4",
                      "--max-wait-ms", "2", "--queue-size", "7", "--threads", "1", "--api-key", "k",
                      "--max-upload-mb", "0.01", "--pool", "mean", "--log-level", "warning")
    assert code == 0 and (ran["host"], ran["port"], ran["log_level"]) == ("127.0.0.1", 8123, "warning")
    service = ran["app"].state.service
    engine = service.engine
    assert (engine.max_batch, engine.max_wait_s, engine.queue_size, engine.threads) == (4, 0.002, 7, 1)
    assert service.pool == "mean" and service.index_pool == "cls" and service.limits.max_upload_bytes == 10485
    key = {"Authorization": "Bearer k"}
    with TestClient(ran["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers=key).json()["index"]["count"] == 3
        assert client.post("/v1/embed", headers=key, files={"file": ("a.png", image_bytes(0))}).json()["pool"] == "mean"
        assert client.post("/v1/search", headers=key, files={"file": ("a.png", image_bytes(0, (80, 80)))}
                           ).status_code == 413  # over --max-upload-mb


def test_the_api_key_can_come_from_the_environment(serve, monkeypatch):
    monkeypatch.setenv("VITKIT_API_KEY", "from-env")
    code, ran = serve("--model", str(DIGITS))
    assert code == 0 and ran["app"].state.service.api_key == "from-env"


def test_listening_beyond_loopback_without_a_key_warns(serve, capsys):
    code, ran = serve("--model", str(DIGITS), "--host", "0.0.0.0")
    assert code == 0 and ran["host"] == "0.0.0.0"
    assert "without --api-key" in capsys.readouterr().err


def test_a_missing_or_mismatched_index_is_an_error_before_serving(serve, tmp_path, capsys):
    code, ran = serve("--model", str(DIGITS), "--index", str(tmp_path / "nothing"))
    assert code == 2 and not ran and "no image index at" in capsys.readouterr().err
    ImageIndex.create(tmp_path / "db", load_digits())
    code, ran = serve("--arch", "vitkit_digits_patch4_32", "--index", str(tmp_path / "db"))  # random weights
    assert code == 2 and not ran and "incomparable vectors" in capsys.readouterr().err
