"""End to end in a real browser: Debian's chromium (no browser download), driven by Playwright, opens the
page of a live `vitkit serve` app on loopback (real DeiT-Tiny, an image index of real photos when
../shared has them; the digits model and generated images otherwise), uploads a photo, and sees the top-5
labels the API gives and thumbnails of the most similar indexed images, the photo itself first.
The page's screenshot is saved (VITKIT_UPDATE_SCREENSHOTS=1 also copies it to docs/images/).

Run:  .venv/bin/python -m pytest tests/test_service_browser.py -q
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from conftest import SHARED
from service_support import load_digits, write_images

import vitkit
from vitkit.index import ImageIndex
from vitkit.service.app import create_app
from vitkit.service.engine import Engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PHOTOS = SHARED / "images" / "imagenet-sample-100"
DEIT_TINY = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "service-page.png"
INDEXED = 12

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                 "(apt-get install chromium; .ci/run installs it)")]


@contextmanager
def live_server(app):
    """The app under uvicorn on a free loopback port, in a thread -> its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def model_and_photos(tmp_path: Path) -> tuple[vitkit.Model, list[Path]]:
    """Real DeiT-Tiny and photos when ../shared has them, else the digits model and generated images."""
    if DEIT_TINY.exists() and PHOTOS.is_dir():
        photos = sorted(PHOTOS.glob("*.JPEG"))[:INDEXED]
        return vitkit.load(str(DEIT_TINY), arch="deit_tiny_patch16_224"), photos
    return load_digits(), write_images(tmp_path / "photos", INDEXED)


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1000, "height": 1100})
        finally:
            browser.close()


def test_the_page_shows_labels_and_similar_images(tmp_path, report):
    from playwright.sync_api import expect

    model, photos = model_and_photos(tmp_path)
    index = ImageIndex.create(tmp_path / "db", model)
    index.add([str(p) for p in photos], model)
    query = photos[3]
    want = [p.label for p in model.classify(str(query), top_k=5)]
    app = create_app(Engine(model, threads=1), ImageIndex.open(tmp_path / "db"))

    with live_server(app) as url, browser_page() as page:
        failed_requests = []
        page.on("requestfailed", lambda request: failed_requests.append(request.url))
        page.goto(url)
        expect(page.locator("#index")).to_contain_text(f"index: {len(photos)} images")
        expect(page.locator("#key-form")).to_be_hidden()  # this server needs no key
        page.set_input_files("#file", str(query))
        expect(page.locator("#status")).to_have_text("Done.", timeout=30_000)
        labels = page.locator("#labels li .label")
        expect(labels).to_have_count(5)
        assert labels.all_inner_texts() == want  # the labels the model gives this photo, best first
        scores = page.locator("#labels li .score").all_inner_texts()
        assert all(s.endswith("%") for s in scores) and float(scores[0][:-1]) >= float(scores[-1][:-1])
        expect(page.locator("#similar figure img")).to_have_count(8)
        page.wait_for_function("[...document.querySelectorAll('#similar img')].every(i => i.complete && "
                               "i.naturalWidth > 0)")
        assert "similarity 1.000" in page.locator("#similar figcaption").first.inner_text()  # the photo itself
        assert failed_requests == []
        shot = tmp_path / "service-page.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VITKIT_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    report(f"browser e2e: chromium showed top-5 labels {want[:2]}... and 8 similar images of {len(photos)} "
           f"indexed ({model.source}); screenshot {shot}")


def test_the_page_asks_for_the_api_key(tmp_path):
    from playwright.sync_api import expect

    image = write_images(tmp_path, 1)[0]
    with live_server(create_app(Engine(load_digits(), threads=1), api_key="s3cret")) as url, browser_page() as page:
        page.goto(url)
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("401: this server needs an API key")
        page.fill("#key", "wrong")
        page.click("#key-form button")
        expect(page.locator("#status")).to_contain_text("401: wrong API key")
        page.fill("#key", "s3cret")
        page.click("#key-form button")
        expect(page.locator("#model")).to_contain_text("10 classes")
        page.set_input_files("#file", str(image))
        expect(page.locator("#labels li")).to_have_count(5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_page_searches_the_index_by_text(family, tiny_image_text, colour_photos, tmp_path, report):
    """A tiny image-text model that knows colours: typing "a purple square" shows the purple photos first."""
    from playwright.sync_api import expect

    from vitkit.image_text import load_text

    folder = str(tiny_image_text[family])
    model, text = vitkit.load(folder), load_text(folder)
    index = ImageIndex.create(tmp_path / "db", model, text=text)
    index.add(list(colour_photos), model, progress=False, workers=0)
    app = create_app(Engine(model, threads=1), ImageIndex.open(tmp_path / "db"), text=text)
    purple = {path for path, colour in colour_photos.items() if colour == "purple"}
    with live_server(app) as url, browser_page() as page:
        page.goto(url)
        expect(page.locator("#index")).to_contain_text("searchable by text")
        expect(page.locator("#text-form")).to_be_visible()
        page.fill("#text-query", "a purple square")
        page.click("#text-form button")
        expect(page.locator("#status")).to_have_text("Done.", timeout=30_000)
        expect(page.locator("#similar-title")).to_contain_text("a purple square")
        expect(page.locator("#similar figure img")).to_have_count(8)
        page.wait_for_function("[...document.querySelectorAll('#similar img')].every(i => i.complete && "
                               "i.naturalWidth > 0)")
        shown = page.locator("#similar figure img").evaluate_all("imgs => imgs.map(i => i.alt)")
        orange = next(path for path, colour in colour_photos.items() if colour == "orange")
        expect(page.locator("#labels-form")).to_be_visible()  # zero-shot: the photo against typed class names
        page.fill("#zero-shot-labels", "red, orange, blue, green")
        page.set_input_files("#file", orange)
        expect(page.locator("#status")).to_have_text("Done.", timeout=30_000)
        expect(page.locator("#labels li .label")).to_have_count(4)
        zero_shot = page.locator("#labels li .label").all_inner_texts()
    top = [Path(p).name for p in shown[:4]]
    assert {Path(p).name for p in purple} == set(top), top  # the four purple photos, before anything else
    assert zero_shot[0] == "orange", zero_shot
    report(f"browser e2e: tiny {family}, text search 'a purple square' on the page: the 4 purple photos of "
           f"{len(colour_photos)} first")
