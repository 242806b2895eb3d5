"""Zero-shot classification and text search the way a user runs them, on a tiny CLIP and a tiny SigLIP that were
trained here (tests/image_text_support.py) to tie pictures of solid colours to the colours' names, with real
tokenizers: `vitkit classify --labels`, `vitkit zero-shot eval`, `vitkit index add` + `vitkit index search --text`,
the ONNX text tower, the service's /v1/search and /v1/embeddings. Anchors: the colour each photo was drawn with
(accuracy, precision of text search against chance), and transformers' CLIPModel / SiglipModel loaded from the
same folder (the zero-shot logits).

Run:  .venv/bin/python -m pytest tests/test_zero_shot.py -q
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("tokenizers")
from image_text_support import COLOURS, write_colour_photos  # noqa: E402

import vitkit  # noqa: E402
from vitkit.cli import main  # noqa: E402
from vitkit.image_text import ZeroShotClassifier, load_text  # noqa: E402

FAMILIES = ("clip", "siglip")
NAMES = ",".join(COLOURS)


@pytest.fixture
def trained(tiny_image_text) -> dict[str, Path]:
    return tiny_image_text


@pytest.fixture
def photos(colour_photos) -> dict[str, str]:
    return colour_photos


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "cache"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_classify_names_the_colours(family, trained, photos, tmp_path, report):
    out = tmp_path / "preds.jsonl"
    code = main(["classify", *photos, "--model", str(trained[family]), "--labels", NAMES, "--format", "jsonl",
                 "-o", str(out), "--no-progress", "--workers", "0", "--device", "cpu"])
    assert code == 0
    rows = _rows(out)
    assert [r["path"] for r in rows] == list(photos) and all(r["error"] is None for r in rows)
    correct = sum(r["top_k"][0]["label"] == photos[r["path"]] for r in rows)
    assert correct / len(rows) >= 0.9, f"{correct}/{len(rows)} (chance: 1/{len(COLOURS)})"
    scores = [p["score"] for p in rows[0]["top_k"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    if family == "clip":  # a softmax over the labels; SigLIP's sigmoids are independent
        assert sum(p["score"] for p in rows[0]["top_k"]) <= 1 + 1e-6
    report(f"zero-shot: tiny {family} trained on colours, `vitkit classify --labels` (CLIP's 80 templates): "
           f"top-1 {correct}/{len(rows)} (chance {len(rows) // len(COLOURS)})")


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_logits_equal_transformers(family, trained, photos):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    folder = str(trained[family])
    model, text = vitkit.load(folder), load_text(folder)
    classifier = ZeroShotClassifier(model, text, list(COLOURS), templates=["a photo of a {}."])
    pixels = model.preprocess(list(photos))
    got = classifier(pixels)
    reference = getattr(transformers, "CLIPModel" if family == "clip" else "SiglipModel").from_pretrained(folder)
    ids = text.tokenizer([f"a photo of a {name}." for name in COLOURS])
    with torch.no_grad():
        want = reference(input_ids=ids, pixel_values=pixels).logits_per_image
    assert (got - want).abs().max().item() <= 1e-4


def test_label_embeddings_are_cached_per_label_set(trained, tmp_path):
    folder = str(trained["clip"])
    first = load_text(folder).label_embeddings(["red", "blue"], ["a {} thing", "{}"])
    cached = sorted((tmp_path / "cache" / "text").glob("*.safetensors"))
    assert len(cached) == 1
    again = load_text(folder).label_embeddings(["red", "blue"], ["a {} thing", "{}"])  # a new process would too
    assert torch.equal(first, again)
    load_text(folder).label_embeddings(["red", "green"], ["a {} thing", "{}"])
    assert len(list((tmp_path / "cache" / "text").glob("*.safetensors"))) == 2  # another label set: another entry


@pytest.mark.slow
def test_a_resumed_job_refuses_another_label_set(trained, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "preds.jsonl"
    args = ["classify", *photos, "--model", str(trained["clip"]), "--format", "jsonl", "-o", str(out),
            "--no-progress", "--workers", "0", "--chunk-size", "16", "--batch-size", "16", "--device", "cpu"]
    calls = []
    top_k = ZeroShotClassifier.top_k

    def interrupted(self, logits, k=5):  # the second batch never finishes: half the job is on disk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return top_k(self, logits, k)

    monkeypatch.setattr(ZeroShotClassifier, "top_k", interrupted)
    assert main(args + ["--labels", NAMES]) == 130
    monkeypatch.setattr(ZeroShotClassifier, "top_k", top_k)
    assert main(args + ["--labels", "red,blue"]) == 2  # other labels: refused, not mixed into the first half
    assert "other zero_shot_labels" in capsys.readouterr().err
    assert main(args + ["--labels", NAMES]) == 0  # the same labels: resumed
    assert "16 from an earlier run" in capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == len(photos) and all(r["top_k"][0]["label"] == photos[r["path"]] for r in rows)


def test_zero_shot_eval_scores_class_folders(trained, tmp_path, capsys, report):
    data = tmp_path / "data"
    for path, colour in write_colour_photos(tmp_path / "flat", per_colour=3, seed=7).items():
        (data / colour).mkdir(parents=True, exist_ok=True)
        Path(path).rename(data / colour / Path(path).name)
    assert main(["zero-shot", "eval", str(data), "--model", str(trained["siglip"]), "--json", "--no-progress",
                 "--workers", "0", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["count"] == 24 and result["top1"] >= 0.9, result
    report(f"zero-shot eval: tiny siglip on 24 colour photos in class folders: top-1 {result['top1']:.3f}, "
           f"top-5 {result['top5']:.3f} (chance 0.125)")


@pytest.mark.parametrize("family", FAMILIES)
def test_text_search_finds_the_colour(family, trained, photos, tmp_path, capsys, report):
    db, folder = str(tmp_path / "db"), str(trained[family])
    assert main(["index", "add", db, *photos, "--model", folder, "--no-progress", "--workers", "0",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    queries = [f"a {name} square" for name in COLOURS]
    args = ["index", "search", db, "--k", "4", "--format", "jsonl", "--device", "cpu"]
    assert main(args + [arg for q in queries for arg in ("--text", q)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == queries
    precision = np.mean([[photos[hit["path"]] == name for hit in row["results"]]
                         for name, row in zip(COLOURS, rows)])
    assert precision >= 0.9, f"precision@4 {precision:.3f} (chance {1 / len(COLOURS):.3f})"
    report(f"text search: tiny {family}, 32 colour photos indexed, 8 text queries: precision@4 {precision:.3f} "
           f"(chance {1 / len(COLOURS):.3f})")


def test_text_search_refuses_another_text_tower_and_image_only_indexes(trained, photos, tmp_path, capsys):
    from vitkit.index import ImageIndex
    from vitkit.index.image_index import IndexMismatch

    clip = str(trained["clip"])
    index = ImageIndex.create(tmp_path / "db", vitkit.load(clip), text=load_text(clip))
    other = load_text(str(trained["siglip"]))
    with pytest.raises(IndexMismatch, match="other weights or another tokenizer"):
        index.search_text(other, ["red"])
    digits = str(Path(vitkit.__file__).parent / "assets" / "digits-vit")
    assert main(["index", "add", str(tmp_path / "digits.db"), *list(photos)[:2], "--model", digits,
                 "--no-progress", "--workers", "0"]) == 0
    assert main(["index", "search", str(tmp_path / "digits.db"), "--text", "red"]) == 2
    assert "built without a text tower" in capsys.readouterr().err


def test_zero_shot_needs_an_image_text_model(photos, capsys):
    digits = str(Path(vitkit.__file__).parent / "assets" / "digits-vit")
    assert main(["classify", *list(photos)[:1], "--model", digits, "--labels", "red,blue", "--workers", "0"]) == 2
    assert "no text tower in this checkpoint" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_text_tower_equals_pytorch_and_searches_the_same_index(family, trained, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    folder = str(trained[family])
    out = tmp_path / "text.onnx"
    assert main(["export", "onnx-text", "--model", folder, "--out", str(out)]) == 0
    torch_text, onnx_text = load_text(folder), load_text(str(out))
    texts = ["a red square", "BLUE!", "", "un carré vert 🟩"]
    assert (torch_text.embed(texts) - onnx_text.embed(texts)).abs().max().item() <= 1e-4
    assert onnx_text.fingerprint == torch_text.fingerprint  # an index built with one takes the other's queries
    assert torch.equal(onnx_text.tokenizer(texts), torch_text.tokenizer(texts))
    from vitkit.index import ImageIndex

    model = vitkit.load(folder)
    index = ImageIndex.create(tmp_path / "db", model, text=torch_text)
    index.add(list(photos), model, progress=False, workers=0)
    hits = index.search_text(onnx_text, ["a yellow square"], k=4)[0]
    assert sum(photos[h.path] == "yellow" for h in hits) >= 3


@pytest.mark.parametrize("family", FAMILIES)
def test_service_text_search_and_openai_embeddings(family, trained, photos, tmp_path):
    from fastapi.testclient import TestClient

    from vitkit.index import ImageIndex
    from vitkit.service.app import create_app
    from vitkit.service.engine import Engine

    folder = str(trained[family])
    model, text = vitkit.load(folder), load_text(folder)
    index = ImageIndex.create(tmp_path / "db", model, text=text)
    index.add(list(photos), model, progress=False, workers=0)
    app = create_app(Engine(model, threads=1), ImageIndex.open(tmp_path / "db"), text=text)
    with TestClient(app) as client:
        info = client.get("/v1/models").json()
        assert info["models"][0]["text"] and info["index"]["text_search"]
        found = client.post("/v1/search?k=4", json={"text": "a green square"})
        assert found.status_code == 200, found.text
        colours = {index.place(path): colour for path, colour in photos.items()}  # hits name no server path
        assert sum(colours[(h["root"], h["path"])] == "green" for h in found.json()["hits"]) >= 3
        body = client.post("/v1/embeddings", json={"input": ["red", "a blue square"], "model": "x"}).json()
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
        want = text.embed(["red", "a blue square"])
        assert np.abs(np.array([d["embedding"] for d in body["data"]]) - want.numpy()).max() <= 1e-5
        assert body["usage"]["prompt_tokens"] == int(
            ((text.tokenizer(["red", "a blue square"]) == text.tokenizer.eos_id).int().argmax(-1) + 1).sum())
        packed = client.post("/v1/embeddings", json={"input": "red", "encoding_format": "base64"}).json()
        decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
        assert np.abs(decoded - want[0].numpy()).max() <= 1e-6
        assert client.post("/v1/search", json={"text": "red", "image": "AAAA"}).status_code == 422
        zero_shot = {path: client.post("/v1/classify", params={"labels": NAMES, "top_k": 3},
                                       files={"file": open(path, "rb")}).json() for path in list(photos)[::4]}
        assert all(r["top_k"][0]["label"] == photos[p] for p, r in zero_shot.items()), zero_shot
        want_top = ZeroShotClassifier(model, text, list(COLOURS), ["a photo of a {}."]).classify(list(zero_shot))
        for (path, got), want in zip(zero_shot.items(), want_top):  # the same scores as vitkit's classifier
            assert [p["label"] for p in got["top_k"]] == [p.label for p in want[:3]]
            assert max(abs(a["score"] - b.score) for a, b in zip(got["top_k"], want)) <= 1e-5
        bad = client.post("/v1/classify", params={"labels": "red", "template": "no slot"},
                          files={"file": open(next(iter(photos)), "rb")})
        assert bad.status_code == 422 and "{}" in bad.json()["detail"]
        assert client.post("/v1/embeddings", json={"input": []}).status_code == 400  # OpenAI's status
        short = client.post("/v1/embeddings", json={"input": "red", "dimensions": 7}).json()["data"][0]["embedding"]
        red = text.embed(["red"])[0]
        cut = red[:7] / red[:7].norm()  # the first 7 dimensions, at unit length again
        assert len(short) == 7 and np.abs(np.array(short) - cut.numpy()).max() <= 1e-5
        assert client.post("/v1/embeddings", json={"input": "red", "dimensions": 10_000}).status_code == 400
    digits = vitkit.load(str(Path(vitkit.__file__).parent / "assets" / "digits-vit"))
    with TestClient(create_app(Engine(digits, threads=1))) as client:
        assert client.post("/v1/embeddings", json={"input": "red"}).status_code == 404
        assert client.post("/v1/classify", params={"labels": "red,blue"},
                           files={"file": open(next(iter(photos)), "rb")}).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_towers_keep_zero_shot_accuracy(family, trained, tmp_path, capsys, report):
    pytest.importorskip("onnxruntime")
    data = tmp_path / "data"
    truth = {}
    for path, colour in write_colour_photos(tmp_path / "flat", per_colour=3, seed=11).items():
        (data / colour).mkdir(parents=True, exist_ok=True)
        target = data / colour / Path(path).name
        Path(path).rename(target)
        truth[str(target)] = colour
    image, text = tmp_path / "image-int8.onnx", tmp_path / "text-int8.onnx"
    assert main(["quantize", "--model", str(trained[family]), "--eval", str(data), "--out", str(image),
                 "--text-out", str(text), "--json", "--no-speed"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["gate"]["passed"] and result["eval"]["accuracy"]["quantized"] >= 0.9, result["eval"]
    assert result["size_mb"]["text_int8"] < result["size_mb"]["text_fp32"]
    out = tmp_path / "preds.jsonl"  # the INT8 files run zero-shot on their own
    assert main(["classify", *truth, "--model", str(image), "--text-model", str(text), "--labels", NAMES,
                 "--format", "jsonl", "-o", str(out), "--no-progress", "--workers", "0"]) == 0
    rows = _rows(out)
    correct = sum(r["top_k"][0]["label"] == truth[r["path"]] for r in rows)
    assert correct / len(rows) >= 0.9
    ev = result["eval"]
    report(f"int8: tiny {family}, both towers INT8 (onnxruntime dynamic): zero-shot top-1 agreement with fp32 "
           f"{ev['top1_agreement']:.3f}, accuracy {ev['accuracy']['fp32']:.3f} -> {ev['accuracy']['quantized']:.3f}, "
           f"image emb cosine {ev['image_embedding_cosine']['mean']:.4f}, label emb cosine "
           f"{ev['label_embedding_cosine']['mean']:.4f}; text {result['size_mb']['text_fp32']} -> "
           f"{result['size_mb']['text_int8']} MB; INT8 files classify {correct}/{len(rows)}")


def test_causal_towers_skip_the_padding_and_siglip_reads_it_all(trained):
    """CLIP never looks past its end token, so embed() cuts the batch after its last one; the vectors are those of
    the full 16 positions. SigLIP pools the last position: nothing is cut."""
    texts = ["red", "a photo of a very very dark blue square", ""]
    for family in FAMILIES:
        text = load_text(str(trained[family]))
        ids = text.tokenizer(texts)
        cut = text._shortest(ids)
        assert cut.shape[1] < ids.shape[1] if family == "clip" else cut.shape[1] == ids.shape[1]
        with torch.no_grad():
            full = torch.nn.functional.normalize(text.net(ids), dim=-1)
        assert (text.embed(texts) - full).abs().max().item() <= 1e-5


def test_zero_shot_eval_reads_imagenet_layouts_and_shows_the_published_figure(trained, photos, tmp_path):
    from vitkit.evaluate import report as eval_report
    from vitkit.evaluate.zero_shot import class_names, evaluate_zero_shot
    from vitkit.labels import imagenet_1k_clip_names

    synsets, numbered, named = tmp_path / "synsets", tmp_path / "numbered", tmp_path / "named"
    for i, (wnid, path) in enumerate(zip(("n01440764", "n01443537"), list(photos)[:2])):
        for root, name in ((synsets, wnid), (numbered, str(i)), (named, f"golden_{wnid}")):
            (root / name).mkdir(parents=True)
            (root / name / Path(path).name).write_bytes(Path(path).read_bytes())
    clip_names = imagenet_1k_clip_names()
    assert class_names(synsets) == (clip_names, True) and class_names(numbered) == (clip_names, True)
    assert class_names(named) == (("golden n01440764", "golden n01443537"), False)
    folder = str(trained["clip"])
    classifier = ZeroShotClassifier(vitkit.load(folder), load_text(folder), clip_names, templates=["{}"])
    evaluation = evaluate_zero_shot(classifier, str(synsets), progress=False, workers=0,
                                    model_arg="openai/clip-vit-base-patch32", imagenet=True)
    assert evaluation.scores.count == 2 and evaluation.published[1].top1 == 63.2
    assert "published for openai/clip-vit-base-patch32: top-1 63.20%" in eval_report.summary(evaluation)


def test_the_shipped_prompts_and_imagenet_names_are_clips():
    """The 80 templates and the 1000 curated class names are the lists CLIP's figures were made with (open_clip
    ships them too: the independent copy)."""
    from reference_openclip import bare_openclip

    from vitkit.image_text import default_templates
    from vitkit.labels import imagenet_1k_clip_names

    try:
        import importlib

        bare_openclip()
        metadata = importlib.import_module("open_clip.zero_shot_metadata")
    except ImportError as err:
        pytest.skip(f"open_clip is not importable: {err}")
    assert default_templates() == tuple(t("{}") if callable(t) else t for t in metadata.OPENAI_IMAGENET_TEMPLATES)
    assert imagenet_1k_clip_names() == tuple(metadata.IMAGENET_CLASSNAMES)


def test_label_embeddings_in_bounded_passes_equal_one_pass(trained, monkeypatch):
    import vitkit.image_text as image_text

    text = load_text(str(trained["clip"]))
    labels, templates = ["red", "green", "blue", "white", "black"], ["a {} square", "{}", "the colour {}"]
    prompts = text.embed([t.format(label) for label in labels for t in templates]).reshape(5, 3, -1)
    want = torch.nn.functional.normalize(prompts.mean(dim=1), dim=-1)  # the definition, in one pass
    monkeypatch.setattr(image_text, "PROMPTS_AT_ONCE", 7)  # two labels (six prompts) per pass
    assert (text.label_embeddings(labels, templates) - want).abs().max().item() <= 1e-6


def test_info_describes_both_towers(trained, capsys):
    assert main(["info", str(trained["siglip"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["family"] == "siglip" and info["text"]["tokenizer"] == "siglip"
    assert info["text"]["config"]["logit_bias"] and info["text"]["context_length"] == 16


@pytest.mark.parametrize("args,message", [
    (["--labels", ",, ,"], "no labels given"),
    (["--labels", "red,blue,red"], "the class names repeat"),
    (["--labels", "red", "--template", "no slot here"], "exactly one {}"),
    (["--template", "a {}"], "--template needs --labels"),
    (["--labels", "x" * 10_001], "more than 10000"),
    (["--labels", "red", "--labels-file", "x.txt"], "not both"),
])
def test_bad_zero_shot_arguments_are_one_line_errors_before_any_model_loads(args, message, tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")  # never reached: the labels are checked first
    assert main(["classify", str(tmp_path), "--model", missing, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_labels_file_that_is_not_text_is_refused_by_name(tmp_path, capsys):
    bad = tmp_path / "labels.txt"
    bad.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    assert main(["classify", str(tmp_path), "--model", str(tmp_path / "m"), "--labels-file", str(bad)]) == 2
    assert f"{bad}: not UTF-8 text" in capsys.readouterr().err
