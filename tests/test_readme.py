"""Every command in README.md runs: its fenced blocks are read, and every bash and python block is run, offline, in a
temporary folder of its own, against tiny random-weight stand-ins of the hub checkpoints it names.

- Hub ids (google/vit-base-patch16-224, openai/clip-vit-base-patch32, ...) resolve through a Hugging Face cache that
  the test builds in a temporary HF_HOME, in the hub's layout (blobs, snapshots/<commit>, refs/main, as
  tests/test_hub.py does), holding tiny models (4 blocks, width 64, 32 px input) in each checkpoint's own format:
  transformers folders, a timm hub folder, CLIP and SigLIP with their tokenizers (tests/image_text_support.py).
  HF_HUB_OFFLINE=1 and an unreachable HF_ENDPOINT: nothing is downloaded. The command itself runs (parsing, loading,
  the job, the files it writes); only the weights are random, so no label in the output means anything.
- The files the README names are made by the test (`stage`): photos/ (the first shared ImageNet photos of
  ../shared/images when present, else drawn pictures), cat.jpg, query.jpg, ... (copies of those), b.png, broken.jpg
  (not an image), panoramas/ (a 3:1 picture), photos-by-class/ and pets-by-class/ (class folders of coloured
  pictures), imagenet/val/ (ImageNet synset folders) and imagenet/val-flat/ with LOC_val_solution.csv, val/ (photos
  with labels.csv), new-photos/, calib-photos/, classes.txt, examples/ (a link to the project's) and
  weights/model.safetensors (the real DeiT-Tiny of ../shared/weights when present, else a random one). Files a
  command uses before a block makes them are made when first named (`PREPARE`): vit.npz (a random ViT-B/16 in
  Google's JAX layout), and deit-tiny-hf/, my-model/ and photos.db, each by the README's own kind of command.
- Each command of a bash block runs in the block's folder and must exit 0: in bash (`set -o pipefail`), or, for a
  plain `vitkit ...` line (no shell syntax outside quotes), as `vitkit.cli.main()` on the words bash would give it,
  as the `vitkit` script runs it, in a child forked from one process that has imported torch and vitkit already
  (FORKER: that saves seconds a command on this CPU, for some 60 commands). What it writes (-o, --output, --out,
  --report) must exist and read back (JSON lines, CSV, .npy, safetensors, parquet, ONNX); `--format jsonl|csv` and
  `--json` output on stdout must parse. Table output is not compared (its layout may change). A `vitkit serve`
  line is started in the background on a free port (the README's 8000 is rewritten in the lines that query it) and
  waited for (/readyz); the lines after it that query it run against it (curl with --fail-with-body from a test
  .curlrc, and a JSON answer); it is stopped before the first line that does not. `torchrun` gets a free master
  port (PET_MASTER_PORT). `make demo` runs in a folder of links to the project with `-o .venv/.core`: a test never
  installs into the environment.
- The python blocks of one section run in one interpreter, in order: block k's test runs blocks 1..k.
- A json block (an example of output) is compared with the output of the command it shows.
- What cannot run here is marked in the README by an HTML comment on the line just above the block:
      <!-- not run by tests: REASON -->                  the whole block
      <!-- not run by tests: `COMMAND PREFIX`: REASON -->  only its commands that start with that prefix
  and a block that queries a server it does not start names it: <!-- tests start: vitkit serve --model M -->.
  test_every_block_is_run_or_marked counts them, fails on a block that is neither run nor marked and on a marker
  that matches nothing; an unmarked command that cannot run fails its block's test.

Run:  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_readme.py -q
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.checkpoints.io import write_tensors
from vitkit.checkpoints.layouts import timm_keymap
from vitkit.checkpoints.save import save_hf, save_jax, save_vitkit
from vitkit.config import BEIT_FIELDS, HALF, PreprocessSpec, ViTConfig
from vitkit.labels import imagenet_1k, imagenet_1k_wnids
from vitkit.models.registry import arch as get_arch
from vitkit.models.vit import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment's vitkit, python and torchrun come first on PATH
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
DEIT_TINY = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"

COMMAND_LANGS = ("bash", "sh", "shell", "console")
PYTHON_LANGS = ("python", "py")
OUTPUT_LANGS = ("json",)
# the blocks (by their first command) that take more than ~30 s here, 2 shared cores: left out of `make test-fast`
SLOW_BLOCKS = ("vitkit models",)  # the command line tour: ~45 commands, 4-5 min

# ---------------------------------------------------------------------------------------------------------------
# Reading the README


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    section: str  # the heading above the block
    not_run: dict[str, str] = field(default_factory=dict)  # command prefix ("" = every command) -> reason
    server: str | None = None  # a `vitkit serve ...` line the block's queries need, started by the test

    @property
    def id(self) -> str:
        return f"L{self.line}-" + re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")

    @property
    def commands(self) -> list[str]:
        return shell_commands(self.text) if self.lang in COMMAND_LANGS else []

    def reason_not_run(self, command: str) -> str | None:
        for prefix, reason in self.not_run.items():
            if command.startswith(prefix):
                return reason
        return None


NOT_RUN = re.compile(r"<!--\s*not run by tests:\s*(.*?)\s*-->", re.S)
SERVER = re.compile(r"<!--\s*tests start:\s*(.*?)\s*-->", re.S)
LINE_MARK = re.compile(r"^`([^`]+)`:\s*(.+)$", re.S)


def read_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        fence = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            block = Block(i + 1, fence.group(1).lower(), "\n".join(lines[i + 1:end]), section)
            k = i - 1
            while k >= 0 and lines[k].strip().startswith("<!--"):  # the comments just above the fence
                for reason in NOT_RUN.findall(lines[k]):
                    by_line = LINE_MARK.match(reason)
                    block.not_run.update({by_line.group(1): by_line.group(2)} if by_line else {"": reason})
                block.server = next(iter(SERVER.findall(lines[k])), block.server)
                k -= 1
            blocks.append(block)
            i = end
        i += 1
    return blocks


def code_part(command: str) -> str:
    """`command` without its shell comments (from a # after whitespace, outside quotes, to the end of its line)."""
    lines, quote = [], None
    for line in command.split("\n"):
        cut = len(line)
        for i, char in enumerate(line):
            if quote:
                quote = None if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#" and (i == 0 or line[i - 1].isspace()):
                cut = i
                break
        lines.append(line[:cut].rstrip())
    return "\n".join(lines)


def shell_commands(text: str) -> list[str]:
    """The commands of a bash block: comment lines and blank lines dropped, a line ending in \\, | or && (before any
    comment) continued by the next."""
    commands, current = [], []
    for line in text.splitlines():
        if not current and not code_part(line).strip():
            continue
        current.append(line)
        if not code_part(line).endswith(("\\", "|", "&&")):
            commands.append("\n".join(current))
            current = []
    assert not current, f"a command continues past the end of its block: {current}"
    return commands


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def runnable(block: Block) -> bool:
    return "" not in block.not_run and block.lang in COMMAND_LANGS + PYTHON_LANGS + OUTPUT_LANGS


def params(kinds: tuple[str, ...]) -> list:
    def marks(block: Block) -> list:
        return [pytest.mark.slow] if block.commands[:1] and block.commands[0].startswith(SLOW_BLOCKS) else []

    return [pytest.param(b, id=b.id, marks=marks(b)) for b in BLOCKS if b.lang in kinds and runnable(b)]


# ---------------------------------------------------------------------------------------------------------------
# The hub cache and the files the README names

TINY = dict(image_size=32, patch_size=8, width=64, depth=4, heads=4, mlp_dim=128)  # the README reads block -4, head 3
LABELS = imagenet_1k()  # ImageNet-1k heads, as the real ones have: `vitkit eval imagenet/val` scores them
HF_VIT = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF,
                        std=HALF)
HF_VIT_64 = PreprocessSpec(input_size=64, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF,
                           std=HALF)
HF_DEIT = PreprocessSpec(input_size=32, crop_pct=0.875, resize_mode="exact", interpolation="bicubic")
TIMM = PreprocessSpec(input_size=32, crop_pct=0.9, interpolation="bicubic", mean=HALF, std=HALF)
HUB = {  # hub id -> (format, config, preprocessing): tiny stand-ins, each in its checkpoint's layout
    "google/vit-base-patch16-224": ("hf", ViTConfig(**TINY, num_classes=1000, labels=LABELS), HF_VIT),
    "google/vit-base-patch16-224-in21k": ("hf", ViTConfig(**TINY, num_classes=0, pre_logits_dim=64), HF_VIT),
    "microsoft/beit-base-patch16-224": ("hf", ViTConfig(**{**TINY, "image_size": 64, "patch_size": 16}, **BEIT_FIELDS,
                                                        num_classes=1000, labels=LABELS), HF_VIT_64),  # 384: 576 tokens
    "facebook/deit-small-patch16-224": ("hf", ViTConfig(**TINY, num_classes=1000, labels=LABELS, family="deit"),
                                        HF_DEIT),
    "facebook/deit-tiny-patch16-224": ("hf", ViTConfig(**TINY, num_classes=1000, labels=LABELS, family="deit"),
                                       HF_DEIT),
    "facebook/dinov2-small": ("hf", ViTConfig(**TINY, num_classes=0, layer_scale_init=1e-5, family="dinov2"), HF_DEIT),
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k": ("timm", ViTConfig(**TINY, num_classes=1000, labels=LABELS),
                                                        TIMM),
}
IMAGE_TEXT = {"openai/clip-vit-base-patch32": "clip", "google/siglip-base-patch16-224": "siglip"}


def add_to_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder`'s files in the cache as huggingface_hub keeps them: content-addressed blobs, a snapshot of links
    named by the commit, refs/main holding that commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for src in sorted(p for p in folder.iterdir() if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def build_hub(root: Path, randomise) -> Path:
    cache = root / "hf-home" / "hub"
    for seed, (repo_id, (fmt, cfg, spec)) in enumerate(HUB.items()):
        net = randomise(VisionTransformer(cfg), seed=seed)
        folder = root / "models" / repo_id
        if fmt == "hf":
            save_hf(net, spec, folder)
        else:  # timm's hub config.json, naming the architecture; the weights file carries the tiny config
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(dict(
                architecture=repo_id.split("/")[1].split(".")[0], num_classes=cfg.num_classes, num_features=cfg.width,
                label_names=list(cfg.labels), pretrained_cfg=dict(
                    input_size=[3, spec.input_size, spec.input_size], crop_pct=spec.crop_pct, crop_mode="center",
                    interpolation=spec.interpolation, mean=list(spec.mean), std=list(spec.std)))))
            save_vitkit(net, spec, folder / "model.safetensors")
        add_to_cache(cache, repo_id, folder)
    pytest.importorskip("tokenizers")
    from image_text_support import clip_vocabulary, sentencepiece_vocabulary, train_image_text

    try:
        vocabularies = {"clip": clip_vocabulary(root / "clip-vocab"), "siglip": sentencepiece_vocabulary(root / "spm")}
    except ImportError as err:
        pytest.skip(f"the test's tokenizer vocabularies cannot be built: {err}")
    for repo_id, family in IMAGE_TEXT.items():
        folder = train_image_text(family, vocabularies[family], root / "models" / repo_id, steps=10)
        add_to_cache(cache, repo_id, folder)
    return root / "hf-home"


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """The first n shared ImageNet photos when they are there, else drawn pictures (gradients and noise)."""
    found = sorted(PHOTOS.glob("*.JPEG"))[:n] if PHOTOS.is_dir() else []
    if len(found) == n:
        return [Image.open(p).convert("RGB") for p in found]
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 96)
    return [Image.fromarray(np.clip(rng.normal(0, 30, (64 + 8 * i, 96, 3)) + ramp[None, :, None]
                                    * rng.uniform(0.3, 1, 3), 0, 255).astype(np.uint8)) for i in range(n)]


def coloured(folder: Path, names: tuple[str, ...], per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            rgb = np.roll([220, 40, 40], c) * rng.uniform(0.8, 1.1)
            pixels = np.clip(rgb + rng.normal(0, 12, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{name}_{i}.png")


def build_stage(stage: Path, randomise) -> None:
    """The inputs the README's commands name (see the module docstring)."""
    photos = pictures(12)
    (stage / "photos" / "old").mkdir(parents=True)
    for i, photo in enumerate(photos[:5]):
        photo.save(stage / "photos" / f"photo_{i}.jpg")
    photos[5].save(stage / "photos" / "old" / "photo_5.jpg")
    (stage / "more" / "trip" / "day1").mkdir(parents=True)
    photos[6].save(stage / "more" / "trip" / "day1" / "photo_6.jpg")
    photos[7].save(stage / "more" / "photo_7.jpg")
    for name, photo in (("cat.jpg", 0), ("query.jpg", 1), ("pet.jpg", 2), ("a.jpg", 3), ("b.jpg", 4), ("big.jpg", 5)):
        photos[photo].save(stage / name)
    photos[4].save(stage / "b.png")
    (stage / "broken.jpg").write_bytes(b"this is not an image")
    (stage / "panoramas").mkdir()
    photos[8].resize((300, 100)).save(stage / "panoramas" / "wide.jpg")
    (stage / "calib-photos").mkdir()
    for i in range(3):
        photos[9 + i % 3].save(stage / "calib-photos" / f"calib_{i}.jpg")
    (stage / "val").mkdir()
    labels_csv = PHOTOS / "labels.csv"
    labelled = list(csv.DictReader(io.StringIO(labels_csv.read_text()))) if labels_csv.is_file() else []
    with open(stage / "val" / "labels.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["file", "class_index"])
        for i, photo in enumerate(photos[:4]):
            photo.save(stage / "val" / f"val_{i}.jpg")
            writer.writerow([f"val_{i}.jpg", labelled[i]["class_index"] if len(labelled) > i else i])
    wnids = [row["wnid"] for row in labelled[:3]] if labelled else list(imagenet_1k_wnids()[:3])
    (stage / "imagenet" / "val-flat").mkdir(parents=True)
    with open(stage / "LOC_val_solution.csv", "w") as solution:  # ImageNet's own: first synset of each row
        solution.write("ImageId,PredictionString\n")
        for i, (wnid, photo) in enumerate(zip(wnids, photos), 1):
            (stage / "imagenet" / "val" / wnid).mkdir(parents=True)
            photo.save(stage / "imagenet" / "val" / wnid / f"{wnid}_0.jpg")
            photo.save(stage / "imagenet" / "val-flat" / f"ILSVRC2012_val_{i:08d}.JPEG")
            solution.write(f"ILSVRC2012_val_{i:08d},{wnid} 10 20 200 220 {wnid} 5 5 100 100\n")
    (stage / "new-photos").mkdir()
    for i, photo in enumerate(photos[8:11]):
        photo.save(stage / "new-photos" / f"new_{i}.jpg")
    (stage / "examples").symlink_to(ROOT / "examples")  # `python examples/edge_classify.py`: the project's own
    coloured(stage / "photos-by-class", ("red", "green", "blue"), per_class=5)
    coloured(stage / "pets-by-class", ("cat", "dog"), per_class=3, seed=1)
    (stage / "classes.txt").write_text("cat\ndog\nred car\n")
    (stage / "weights").mkdir()
    if DEIT_TINY.is_file():
        shutil.copy(DEIT_TINY, stage / "weights" / "model.safetensors")
    else:  # timm's keys and nothing else, as a file that needs --arch
        cfg = get_arch("deit_tiny_patch16_224").config
        tensors = timm_keymap(cfg).to_foreign(randomise(VisionTransformer(cfg)).state_dict(), cfg)
        write_tensors(tensors, stage / "weights" / "model.safetensors")


def make_vit_npz(work: Path, line: str) -> str | None:
    """A random ViT-B/16 in Google's JAX .npz layout (what `--arch vit_base_patch16_224` expects)."""
    row = get_arch("vit_base_patch16_224")
    save_jax(VisionTransformer(row.config), row.preprocess, work / "vit.npz")
    return None


def model_of(line: str) -> str:
    words = shlex.split(code_part(line))
    return words[words.index("--model") + 1]


# name -> how it is made when a command uses it before its block makes it: a shell command, or a function of the
# folder and the line that names it
PREPARE = {
    "vit.npz": make_vit_npz,
    "deit-tiny-hf": "vitkit convert ./weights/model.safetensors --arch deit_tiny_patch16_224 --to hf "
                    "--out deit-tiny-hf/",
    "my-model": "vitkit finetune photos-by-class/ --model google/vit-base-patch16-224 --out my-model "
                "--recipe linear-probe",
    "photos.db": lambda work, line: f"vitkit index add photos.db photos/ --model {model_of(line)}",
}
# commands run otherwise, and why: a test never installs into the environment (make's -o: that target is taken as
# made, whatever the dates of pyproject.toml and .venv/.core)
RUN_AS = {"make demo": "make -o .venv/.core demo"}
WRITES = ("-o", "--output", "--out", "--report")


def written_by(words: list[str]) -> set[str]:
    """The paths a vitkit command writes: after -o/--output/--out/--report, and `index add`'s index."""
    found = {words[i + 1] for i, w in enumerate(words[:-1]) if w in WRITES}
    if words[1:3] == ["index", "add"] and len(words) > 3:
        found.add(words[3])
    return {w.rstrip("/") for w in found}


@pytest.fixture(scope="module")
def shell(tmp_path_factory, randomise):
    """The hub cache, the inputs (`stage`) and the Shell the README's commands run in."""
    root = tmp_path_factory.mktemp("readme")
    started = time.monotonic()
    hf_home = build_hub(root, randomise)
    (root / "stage").mkdir()
    build_stage(root / "stage", randomise)
    (root / "curl").mkdir()  # curl fails on an HTTP error status, with the body, and never waits for long
    (root / "curl" / ".curlrc").write_text("--fail-with-body\n--silent\n--show-error\n--max-time 120\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PET_", "VITKIT_", "CURL_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
               HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1", VITKIT_CACHE_DIR=str(root / "vitkit-cache"), CURL_HOME=str(root / "curl"),
               MPLBACKEND="Agg", MPLCONFIGDIR=str(root / "matplotlib"))
    print(f"hub cache and inputs made in {time.monotonic() - started:.1f} s")
    with Shell(env, root / "stage") as sh:
        yield sh


@pytest.fixture
def work(shell, tmp_path) -> Path:
    """The block's folder, holding a copy of the inputs."""
    folder = tmp_path / "work"
    shutil.copytree(shell.stage, folder, symlinks=True, copy_function=os.link)  # inputs are only read: links do
    shell.env["PET_MASTER_PORT"] = str(free_port())  # torchrun's default master port, 29500, may be taken
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# Running a block

QUERIES = re.compile(r"(127\.0\.0\.1|localhost):8000")
SHELL_SYNTAX = set("|&;<>()$`*?[]{}~=\\")  # outside quotes: a command for bash itself

# A process that has imported what every command imports (torch, vitkit: seconds on this CPU) and forks once per
# command, the child running `vitkit.cli.main()` on the command's words as the `vitkit` script does. Nothing that
# starts threads at import is loaded (a forked child keeps only one thread): lancedb, onnxruntime and transformers
# are imported by the commands that use them.
FORKER = r"""
import json, os, sys, traceback
import numpy, PIL.Image, safetensors.torch, torch
import vitkit.api, vitkit.cli, vitkit.batch.job, vitkit.data.loader
print(json.dumps({"threads": len(os.listdir("/proc/self/task"))}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(path, flags, 0o644), fd)
        sys.argv = ["vitkit", *job["argv"]]
        try:
            code = vitkit.cli.main()
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
"""


def plain_vitkit(command: str) -> list[str] | None:
    """The words after `vitkit` of a command that is only that (no shell syntax outside quotes), else None."""
    code, quote = code_part(command), None
    for char in code:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in SHELL_SYNTAX:
            return None
    words = shlex.split(code)
    return words[1:] if words[:1] == ["vitkit"] and words[1:2] != ["serve"] else None


class Shell:
    """Runs a command in a folder: a plain `vitkit ...` line in a child of the FORKER, anything else in bash."""

    def __init__(self, env: dict, stage: Path):
        self.env, self.stage, self.pending = env, stage, b""
        self.forker: subprocess.Popen | None = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                                                                stdout=subprocess.PIPE, env=env)
        if self.message(600).get("threads") != 1:  # a fork would keep another thread's locks, held: bash only, then
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.forker:
            self.forker.stdin.close()
            self.forker.wait(timeout=60)
            self.forker = None

    def message(self, timeout: float) -> dict:
        """The forker's next line, as JSON ({} if none came within `timeout` s); read unbuffered, so that select sees
        what has not been read yet."""
        deadline = time.monotonic() + timeout
        fd = self.forker.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                return {}
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, command: str, folder: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        argv = plain_vitkit(command) if self.forker else None
        if argv is None:
            try:
                return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=folder, env=self.env,
                                      capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as err:
                pytest.fail(f"`{command}` ran past {timeout} s:\n{err.stderr}")
        out, err = folder / ".command.out", folder / ".command.err"
        self.forker.stdin.write(json.dumps(dict(argv=argv, cwd=str(folder), stdout=str(out), stderr=str(err))).encode()
                                + b"\n")
        self.forker.stdin.flush()
        pid = self.message(60)["pid"]
        done = self.message(timeout)
        if not done:
            os.kill(pid, signal.SIGKILL)  # the command's own process, a child of the forker
            self.message(60)
            pytest.fail(f"`{command}` ran past {timeout} s:\n{err.read_text()[-5000:]}")
        return subprocess.CompletedProcess(argv, done["rc"], out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


class Server:
    """A `vitkit serve` line, started on a free port and waited for until /readyz answers 200."""

    def __init__(self, line: str, folder: Path, env: dict, timeout: float = 180):
        self.port, self.line = free_port(), line
        code = re.sub(r"\bvitkit serve\b", f"vitkit serve --port {self.port}", code_part(line), count=1)
        self.log = folder / f"serve-{self.port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["bash", "-c", code], cwd=folder, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"`{line}` ended (exit {self.proc.returncode}) before it was ready:\n"
                            f"{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"`{line}` not ready after {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.5)

    def query(self, line: str) -> str:
        return QUERIES.sub(lambda m: f"{m.group(1)}:{self.port}", line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this test started: bash and the server under it
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def words_of(command: str) -> list[str]:
    try:
        return shlex.split(code_part(command.replace("\\\n", " ")))
    except ValueError:  # unbalanced quotes across a pipe: no vitkit words to check
        return []


def prepare(command: str, folder: Path, shell: Shell) -> None:
    """Make what `command` uses before its block makes it (PREPARE)."""
    words = words_of(command)
    writes = written_by(words)
    for word in (w.rstrip("/") for w in words):
        if word in PREPARE and word not in writes and not (folder / word).exists():
            how = PREPARE[word]
            how = how(folder, command) if callable(how) else how
            if how:
                done = shell.run(how, folder)
                assert done.returncode == 0, f"making {word} for `{command}`: `{how}` failed:\n{done.stderr}"


def check_file(path: Path, command: str) -> None:
    """What a command wrote reads back."""
    assert path.exists(), f"`{command}` did not write {path.name}"
    name = path.name
    if path.is_dir():
        assert any(path.iterdir()), f"`{command}` left {name} empty"
    elif name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows, f"{name} has no rows"
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".csv"):
        assert list(csv.reader(path.open())), f"{name} is empty"
    elif name.endswith(".npy"):
        np.load(path)
        check_file(path.with_name(name.removesuffix(".npy") + ".rows.jsonl"), command)
    elif name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            assert list(fh.keys()), f"{name} holds no tensors"
    elif name.endswith(".parquet"):
        import pyarrow.parquet

        assert pyarrow.parquet.read_table(path).num_rows
    elif name.endswith(".onnx"):
        import onnx

        onnx.checker.check_model(str(path))
    else:
        assert path.stat().st_size, f"{name} is empty"


def check_output(command: str, stdout: str, folder: Path) -> None:
    words = words_of(command)
    for i, word in enumerate(words[:-1]):
        if word in WRITES:
            check_file(folder / words[i + 1], command)
    if "-o" in words or "--output" in words:
        return
    fmt = words[words.index("--format") + 1] if "--format" in words[:-1] else None
    if fmt == "jsonl":
        rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        assert rows, f"`{command}` printed no rows"
    elif fmt == "csv":
        assert len(list(csv.reader(io.StringIO(stdout)))) > 1, f"`{command}` printed no CSV rows:\n{stdout}"
    elif "--json" in words:
        json.loads(stdout)


@dataclass
class Done:
    command: str
    seconds: float
    how: str  # "ran", "served", "queried" or "not run: REASON"


def run_block(block: Block, folder: Path, shell: Shell) -> list[Done]:
    done: list[Done] = []
    server = Server(block.server, folder, shell.env) if block.server else None  # what the block's queries ask
    in_block: Server | None = None  # a `vitkit serve` line of the block, up while the lines after it query it
    try:
        for command in block.commands:
            started = time.monotonic()
            reason = block.reason_not_run(command)
            if reason:
                done.append(Done(command, 0.0, f"not run: {reason}"))
                continue
            queries = bool(QUERIES.search(code_part(command)))
            if in_block and not queries:
                in_block.stop()
                in_block = None
            prepare(command, folder, shell)
            if re.search(r"\bvitkit serve\b", code_part(command)):
                in_block = Server(command, folder, shell.env)
                done.append(Done(command, time.monotonic() - started, "served"))
                continue
            target = in_block or server
            if queries:
                assert target, f"`{command}` queries a server the block does not start: name one (tests start: ...)"
            result = shell.run(target.query(command) if queries else RUN_AS.get(code_part(command), command), folder)
            assert result.returncode == 0, (f"`{command}` exited {result.returncode}\n--- stdout\n"
                                            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}")
            if queries:
                json.loads(result.stdout)  # the service answers JSON
            else:
                check_output(command, result.stdout, folder)
            done.append(Done(command, time.monotonic() - started, "queried" if queries else "ran"))
            print(f"{done[-1].seconds:6.1f} s  {command}", flush=True)  # shown when a later command fails
    finally:
        for up in (in_block, server):
            if up:
                up.stop()
    return done


def summary(block: Block, done: list[Done]) -> str:
    ran = [d for d in done if not d.how.startswith("not run")]
    lines = [f"README line {block.line} ({block.section}): {len(ran)} of {len(done)} commands run in "
             f"{sum(d.seconds for d in done):.0f} s"]
    lines += [f"  {d.seconds:6.1f} s  {d.how:8.8}  {d.command.splitlines()[0][:110]}" for d in done]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The tests


def test_every_block_is_run_or_marked(report):
    """Every fenced block is run by a test below, or marked `not run by tests` with its reason; every marker names
    commands its block has."""
    assert BLOCKS, "no fenced blocks found in README.md"
    unaccounted, marked = [], []
    for block in BLOCKS:
        if not runnable(block):
            if "" not in block.not_run:
                unaccounted.append(f"line {block.line}: a ```{block.lang} block, which no test runs; mark it")
            marked.append(f"line {block.line} (all): {block.not_run.get('', block.lang)}")
            continue
        for prefix, reason in block.not_run.items():
            assert any(c.startswith(prefix) for c in block.commands), \
                f"line {block.line}: the marker `{prefix}` matches none of the block's commands"
            marked.append(f"line {block.line} `{prefix}`: {reason}")
        if block.lang in COMMAND_LANGS:
            assert block.commands, f"line {block.line}: a shell block without commands"
    assert not unaccounted, "\n".join(unaccounted)
    report(f"README: {len(BLOCKS)} blocks, {sum(map(runnable, BLOCKS))} run by tests/test_readme.py; not run:\n  "
           + "\n  ".join(marked))


@pytest.mark.parametrize("block", params(COMMAND_LANGS))
def test_readme_commands_run(block, shell, work, report):
    folder = make_folder(work) if block.commands[0].startswith("make ") else work
    done = run_block(block, folder, shell)
    report(summary(block, done))


def make_folder(folder: Path) -> Path:
    """A folder of links to the project's Makefile, examples and environment: `make demo` runs the demo there (its
    demo-out/ is written there) and, as RUN_AS has it, takes the environment as made."""
    for name in ("Makefile", "pyproject.toml", ".venv"):  # examples/ is there already
        (folder / name).symlink_to(ROOT / name)
    return folder


@pytest.mark.parametrize("block", params(PYTHON_LANGS))
def test_readme_python_runs(block, shell, work, report):
    """This block and the python blocks before it in its section, in one interpreter."""
    folder = work
    section = [b for b in BLOCKS if b.section == block.section and b.lang in PYTHON_LANGS and b.line <= block.line]
    script = "\n\n".join(f"print('--- README line {b.line}', flush=True)\n{b.text}" for b in section)
    (folder / "readme_example.py").write_text(script)
    started = time.monotonic()
    result = shell.run("python readme_example.py", folder)
    assert result.returncode == 0, f"README line {block.line}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    report(f"README line {block.line} ({block.section}): python, {time.monotonic() - started:.0f} s")


@pytest.mark.parametrize("block", params(OUTPUT_LANGS))
def test_readme_output_examples_match_the_output(block, shell, work):
    """The `classify --format jsonl` rows shown: same keys, the same error for a file that is not an image."""
    folder = work
    shown = [json.loads(line.replace(", ...]", "]")) for line in block.text.splitlines() if line.strip()]
    (folder / "photos" / "cat.jpg").write_bytes((folder / "cat.jpg").read_bytes())
    (folder / "photos" / "broken.jpg").write_bytes(b"not an image")
    result = shell.run("vitkit classify " + " ".join(row["path"] for row in shown)
                 + " --model google/vit-base-patch16-224 --format jsonl", folder)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [r["path"] for r in shown], result.stderr
    for want, got in zip(shown, rows):
        assert set(got) == set(want)
        assert all(set(p) == set(q) for p in got["top_k"] for q in want["top_k"])
        assert got["error"] == want["error"] and bool(got["top_k"]) == bool(want["top_k"])
