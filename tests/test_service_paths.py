"""No answer of the service names the server's files by their absolute paths: a search hit (by image, multipart or
JSON, and by text) names its file by the indexed folder's name and the path below it, the place `vitkit index`
recorded; thumbnails (by id) and their errors, /v1/models, /metrics and the schema hold no server path either.
Anchor: each indexed image, as a query, finds itself first, at the place it was indexed from.

Run:  .venv/bin/python -m pytest tests/test_service_paths.py -q
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from service_support import image_bytes, load_digits, serve

pytest.importorskip("lancedb")

from vitkit.index import ImageIndex  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["digits", pytest.param("clip-with-text", marks=pytest.mark.slow)])
def models(request):
    """(image model, its text tower or None)."""
    if request.param == "digits":
        return load_digits(), None
    import vitkit
    from vitkit.image_text import load_text

    folder = str(request.getfixturevalue("tiny_image_text")["clip"])
    return vitkit.load(folder), load_text(folder)


def indexed_places(server: Path) -> dict[Path, tuple[str, str]]:
    """Distinct image files under `server` in three roots (class folders, a file named directly, a second folder
    named "photos") -> the place a search hit should give for each."""
    files = {"photos/cats/a.png": ("photos", "cats/a.png"), "photos/cats/b.png": ("photos", "cats/b.png"),
             "photos/dogs/a.png": ("photos", "dogs/a.png"), "elsewhere/lone.png": ("elsewhere", "lone.png"),
             "more/photos/a.png": ("photos~2", "a.png"), "more/photos/deep/b.png": ("photos~2", "deep/b.png")}
    places = {}
    for seed, (name, place) in enumerate(files.items()):
        path = server / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(50 + seed, size=(48, 48)))
        places[path] = place
    return places


def test_no_answer_names_the_servers_index_root(models, tmp_path):
    model, text = models
    server = tmp_path / "server"
    places = indexed_places(server)
    index = ImageIndex.create(tmp_path / "db", model, text=text)
    index.add([str(server / "photos"), str(server / "elsewhere" / "lone.png"), str(server / "more" / "photos")],
              model, progress=False)
    answers = []
    with serve(model, ImageIndex.open(tmp_path / "db"), text=text) as client:
        for path, place in places.items():
            data = path.read_bytes()
            by_form = client.post("/v1/search?k=10", files={"file": ("q.png", data)})
            by_json = client.post("/v1/search?k=10", json={"image": base64.b64encode(data).decode()})
            for answer in (by_form, by_json):
                assert answer.status_code == 200, answer.text
                best = answer.json()["hits"][0]
                assert (best["root"], best["path"]) == place and best["score"] == pytest.approx(1.0, abs=1e-4)
            hits = by_form.json()["hits"]
            assert {(h["root"], h["path"]) for h in hits} == set(places.values())
            answers += [by_form, by_json, *(client.get(h["thumbnail"]) for h in hits)]
        if text is not None:
            by_text = client.post("/v1/search?k=10", json={"text": "a red square"})
            assert {(h["root"], h["path"]) for h in by_text.json()["hits"]} == set(places.values())
            answers.append(by_text)
        gone = next(iter(places))
        gone_id = next(h["id"] for h in by_form.json()["hits"] if (h["root"], h["path"]) == places[gone])
        gone.unlink()
        missing = client.get(f"/v1/thumbnail/{gone_id}")
        assert missing.status_code == 404 and "can no longer be read: no such file" in missing.json()["detail"]
        answers += [missing, client.get("/v1/thumbnail/" + "0" * 64), client.get("/v1/models"),
                    client.get("/metrics"), client.get("/openapi.json")]
    for answer in answers:
        body = answer.content.decode("latin-1")  # JPEG bytes too
        assert str(tmp_path) not in body and str(server) not in body, (answer.request.url, body[:300])
