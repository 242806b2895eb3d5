"""The service's engine: concurrent requests become micro-batches (up to max_batch, waiting at most
max_wait_ms), results equal the CLI's code path image by image, the model runs in the engine's own thread
with the pinned thread count, a full queue refuses, abandoned requests cost nothing, a failing model fails
only its requests.

Run:  .venv/bin/python -m pytest tests/test_service_engine.py -q
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from service_support import Gated, batches_of, image_bytes, load_digits

from vitkit.data.decode import ImageDecodeError, ImageTooLarge
from vitkit.service.engine import Engine, EngineBusy, EngineStopped, ModelFailure

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_digits()


@pytest.fixture(scope="module")
def pixels(model):
    engine = Engine(model)
    return [engine.prepare(image_bytes(seed)) for seed in range(10)]


def test_prepare_is_the_cli_preprocessing(model):
    data = image_bytes(3, size=(70, 50))
    assert torch.equal(Engine(model).prepare(data), model.preprocess(data)[0])


def test_prepare_refuses_bad_input_with_the_reason(model):
    engine = Engine(model, max_pixels=40 * 30 - 1)
    with pytest.raises(ImageTooLarge, match="image too large: 40x30"):
        engine.prepare(image_bytes(0, size=(40, 30)))
    with pytest.raises(ImageDecodeError, match="not an image"):
        engine.prepare(b"not an image at all")


def test_concurrent_requests_form_batches_with_the_clis_results(model, pixels):
    engine = Engine(model, max_batch=4, max_wait_ms=200, threads=1)
    sizes = batches_of(engine)
    with engine:
        futures = [engine.submit("classify", p, 3) for p in pixels]
        results = [f.result(timeout=30) for f in futures]
    assert sizes == [4, 4, 2]  # full batches, then what was left
    expected = model.top_k(model(torch.stack(pixels)), 3)  # what `vitkit classify` computes for these pixels
    for got, want in zip(results, expected):
        assert [p.index for p in got] == [p.index for p in want]
        assert [p.score for p in got] == pytest.approx([p.score for p in want], abs=1e-5)


def test_a_batch_waits_at_most_max_wait(model, pixels):
    engine = Engine(model, max_batch=32, max_wait_ms=100, threads=1)
    sizes = batches_of(engine)
    with engine:
        start = time.perf_counter()
        engine.submit("classify", pixels[0], 1).result(timeout=30)
        alone = time.perf_counter() - start
    assert sizes == [1]
    assert 0.09 < alone < 2.0  # it waited for company, then ran alone


def test_mixed_batch_top_k_and_pooling(model, pixels):
    engine = Engine(model, max_batch=8, max_wait_ms=200, threads=1)
    sizes = batches_of(engine)
    with engine:
        futures = [engine.submit("classify", pixels[1], 2), engine.submit("embed", pixels[2], "cls"),
                   engine.submit("classify", pixels[3], 5), engine.submit("embed", pixels[4], "mean")]
        two, cls, five, mean = (f.result(timeout=30) for f in futures)
    assert sizes == [4]  # one batch: one forward for both classifications, one per pooling
    assert len(two) == 2 and len(five) == 5
    assert [p.index for p in five] == [p.index for p in model.top_k(model(pixels[3][None]), 5)[0]]
    for vector, pool, p in ((cls, "cls", pixels[2]), (mean, "mean", pixels[4])):
        want = model.embed_pixels(p[None], pool)[0].numpy()  # what `vitkit embed` computes
        np.testing.assert_allclose(vector, want, atol=1e-5)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_the_model_runs_in_the_engine_thread_with_pinned_threads(model, pixels):
    gated = Gated(model)
    with Engine(gated, threads=1) as engine:
        engine.submit("classify", pixels[0], 1).result(timeout=30)
    assert {name for name, _, _ in gated.calls} == {"vitkit-engine"}
    assert {threads for _, threads, _ in gated.calls} == {1}


def test_a_full_queue_refuses_and_a_stopped_engine_too(model, pixels):
    gated = Gated(model)
    engine = Engine(gated, max_batch=1, queue_size=2, threads=1)
    with pytest.raises(EngineStopped):
        engine.submit("classify", pixels[0], 1)
    with engine:
        running = gated.hold(engine, pixels[0])
        queued = [engine.submit("classify", p, 1) for p in pixels[1:3]]
        with pytest.raises(EngineBusy, match="2 requests are already waiting"):
            engine.submit("classify", pixels[3], 1)
        gated.gate.set()
        assert all(f.result(timeout=30) for f in [running, *queued])
    with pytest.raises(EngineStopped):
        engine.submit("classify", pixels[0], 1)
    with engine:  # it starts again
        assert engine.submit("classify", pixels[0], 1).result(timeout=30)


def test_abandoned_requests_are_not_run(model, pixels):
    gated = Gated(model)
    engine = Engine(gated, max_batch=8, max_wait_ms=0, threads=1)
    sizes = batches_of(engine)
    with engine:
        first = gated.hold(engine, pixels[0])
        waiting = [engine.submit("classify", p, 1) for p in pixels[1:4]]
        assert waiting[0].cancel() and waiting[2].cancel()  # their callers timed out or went away
        gated.gate.set()
        first.result(timeout=30)
        waiting[1].result(timeout=30)
    assert sizes == [1, 1]


def test_a_failing_model_fails_its_requests_not_the_engine(model, pixels):
    engine = Engine(model, threads=1)
    with engine:
        bad = engine.submit("embed", pixels[0], "no-such-pool")
        with pytest.raises(ModelFailure, match="failed on a batch of 1: unknown pool") as raised:
            bad.result(timeout=30)
        assert isinstance(raised.value.__cause__, ValueError)
        assert engine.submit("classify", pixels[1], 1).result(timeout=30)  # still serving
    with pytest.raises(ValueError, match="unknown kind"):
        engine.submit("detect", pixels[0], 1)


def test_a_model_that_cannot_run_fails_start(model):
    class Broken(Gated):
        def __call__(self, pixels):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="warm-up batch: out of memory"):
        Engine(Broken(model)).start()


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="max_batch >= 1"):
        Engine(model, max_batch=0)
