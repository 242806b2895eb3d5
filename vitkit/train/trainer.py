"""Fine-tune a ViT-family model on a labelled image folder or manifest, exactly resumable and DDP-ready.

Exactness: the order of samples is a pure function of (seed, epoch); augmentation is seeded per sample;
the global RNG (drop path) is saved in every checkpoint; each global batch is the same set of samples
whatever the number of ranks (rank r takes its slice of every global batch). So a run interrupted and
resumed, and a run on N ranks, follow the same loss curve as one uninterrupted single-process run.

Multi-label (`--multi-label`, DATA a manifest of label sets: vitkit.data.tagged): a sigmoid head trained with
BCE (or the asymmetric loss), the best model chosen by validation mAP, and per class the F1-optimal threshold on
validation stored in the saved config (transformers' problem_type "multi_label_classification").

Linear probe first (LP-FT): `linear-probe` solves the head on frozen features (vitkit.train.probe) and stops;
`freeze` and `full` start fine-tuning from that head, and the probe counts as epoch 0: it is evaluated and
kept as the best model until an epoch beats it on validation, so the saved model is never worse there.

Output: OUT is a transformers model folder (config.json with id2label, model.safetensors,
preprocessor_config.json) holding the best model by validation top-1 (the last one without validation),
plus log.jsonl, curves.png, train_config.json and checkpoints/last.pt (for --resume). An existing OUT is
refused unless the run resumes it or overwrites it.

Try it:  python -m pytest tests/test_finetune.py -q
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkit.api import load as load_model, resolve_device
from vitkit.checkpoints.io import atomic_path, publish, write_atomic_text
from vitkit.checkpoints.model_card import hf_folder_loading, model_card, write_model_card
from vitkit.checkpoints.save import save_folder
from vitkit.data.workers import die_with_parent
from vitkit.models.registry import MODELS
from vitkit.models.vit import VisionTransformer
from vitkit.batch import distributed
from vitkit.train.augment import eval_transform, mixup_cutmix, train_transform
from vitkit.train.config import TrainConfig
from vitkit.data.labelled import DatasetError, discover
from vitkit.data.tagged import discover_tagged
from vitkit.train.datasets import LabelledImages, find_bad_images
from vitkit.train.defaults import resolve
from vitkit.train.ema import EMA
from vitkit.train.evaluate import autocast, evaluate, evaluate_multi_label
from vitkit.train.features import FeatureExtractor
from vitkit.train.losses import multi_label_loss, soft_cross_entropy
from vitkit.train.optim import apply_recipe, build_optimizer
from vitkit.train.probe import Probe, fit_probe
from vitkit.train.schedule import lr_at, set_lr

CHECKPOINT = "checkpoints/last.pt"


@dataclass
class State:
    """Where a run is: the next optimizer step to take and what the run has learnt about itself."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -1.0  # validation top-1, or mAP for a multi-label head
    best_epoch: int = -1  # 0: the linear probe
    bad_epochs: int = 0
    epoch_loss_sum: float = 0.0  # over the steps of the current epoch so far
    probed: bool = False  # the head was solved by the linear probe (it is in the checkpointed weights)


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def build_network(cfg: TrainConfig, labels: list[str]):
    """The base model with a new head for `labels` (and the run's drop path); returns (net, eval spec, the base's
    provenance)."""
    base = load_model(cfg.model, cfg.arch, image_size=cfg.image_size, device="cpu", drop_path=cfg.drop_path)
    torch.manual_seed(cfg.seed)
    base.net.reset_classifier(labels, multi_label=cfg.multi_label)
    return base.net.float(), base.spec, base.provenance


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False):
        self.out = Path(cfg.out)
        self.device = distributed.init_from_env(cfg.device) or resolve_device(cfg.device)
        self.rank, self.world = distributed.rank_and_world()
        if not resume and not overwrite and self.out.is_dir() and any(self.out.iterdir()):
            raise FileExistsError(f"--out {self.out} already holds files: give --resume to continue that run, "
                                  "--overwrite to replace it, or another --out")
        if cfg.multi_label and (cfg.mixup or cfg.cutmix):
            raise ValueError("--mixup and --cutmix mix one label per image: leave them off with --multi-label")
        splits = self._splits(cfg)
        if len(splits.labels) < 2:
            raise DatasetError(f"{cfg.data}: one class ({splits.labels[0]}); a classifier needs at least two")
        resolved = resolve(cfg, len(splits.train), self.world)
        self.cfg = cfg = resolved.cfg
        self._say(f"{len(splits.train)} training and {len(splits.val)} validation images, "
                  f"{len(splits.labels)} classes; {resolved.line}")
        for warning in resolved.warnings:
            self._say(f"warning: {warning}")
        per_step = cfg.batch_size // (self.world * cfg.grad_accum)
        if per_step * self.world * cfg.grad_accum != cfg.batch_size:
            raise ValueError(f"--batch-size {cfg.batch_size} must divide by ranks x --grad-accum "
                             f"({self.world} x {cfg.grad_accum})")
        self.micro = per_step
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA GPU (it relies on loss scaling); use --amp bf16 on CPU")
        self.labels = splits.labels
        self.metric = "mAP" if cfg.multi_label else "top-1"
        self.loss = multi_label_loss(cfg.multi_label_loss) if cfg.multi_label else \
            (lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing))
        self.net, self.spec, self.base_provenance = self._network(cfg, self.labels)
        apply_recipe(self.net, cfg.recipe, cfg.freeze_blocks)
        self.net.grad_checkpointing = cfg.grad_checkpointing
        self.net.to(self.device)
        ops = cfg.augment if cfg.augment in ("trivial", "rand") else None
        transform = train_transform(self.spec, scale=(cfg.crop_scale, 1.0), hflip=cfg.hflip, auto_augment=ops)
        self.train_set = LabelledImages(splits.train, transform, cfg.seed, num_classes=len(self.labels))
        self.val_set = _val_set(splits.val, self.spec, cfg.seed, len(self.labels))
        self.steps_per_epoch = len(splits.train) // cfg.batch_size
        if not self.steps_per_epoch:
            raise ValueError(f"{len(splits.train)} training images are fewer than one batch of {cfg.batch_size}")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = cfg.warmup_steps
        self.optimizer = build_optimizer(self.net, cfg.lr, cfg.weight_decay, cfg.layer_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.ema = EMA(self.net, cfg.ema) if cfg.ema else None
        self.model = (DistributedDataParallel(self.net) if self.world > 1 else self.net)
        self.state = State()
        self._prepare()
        torch.manual_seed(cfg.seed)
        if resume:
            self._load_checkpoint()
        elif self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CHECKPOINT).unlink(missing_ok=True)  # --overwrite: nothing of the old run resumes
            write_atomic_text(json.dumps(cfg.to_dict(), indent=2) + "\n", self.out / "train_config.json")
            (self.out / "log.jsonl").write_text("")

    # -- what a subclass (vitkit.train.distill) replaces ---------------------------------------------------------
    def _splits(self, cfg: TrainConfig):
        """The training and validation items and the class names: (path, label index or label set) items."""
        return (discover_tagged if cfg.multi_label else discover)(cfg.data, cfg.val_split, cfg.seed)

    def _network(self, cfg: TrainConfig, labels: list[str]):
        return build_network(cfg, labels)

    def _prepare(self) -> None:
        """Work before the first step, once the network and the data sets exist (nothing here)."""

    def _view(self, epoch: int) -> int:
        """The augmentation epoch of the samples of training epoch `epoch` (fresh draws every epoch)."""
        return epoch

    def _loss(self, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model(pixels).float(), targets)

    def _evaluate(self) -> tuple[dict, float, tuple[float, ...]]:
        """(validation figures for the log, the score the best model is chosen by, multi-label thresholds)."""
        args = (self._eval_net(), self.val_set, self.labels, self.micro * 2, self.device, self.cfg.workers,
                self.cfg.amp)
        if self.cfg.multi_label:
            metrics = evaluate_multi_label(*args)
            return ({"val_loss": metrics["loss"], "val_map": metrics["map"], "val_micro_f1": metrics["micro_f1"],
                     "val_macro_f1": metrics["macro_f1"]}, metrics["map"], tuple(metrics["thresholds"]))
        metrics = evaluate(*args)
        return {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]}, \
            metrics["top1"], ()

    def _made_by(self) -> str:
        return "fine-tuned by `vitkit finetune`"

    def _say(self, message: str) -> None:
        if self.rank == 0:
            print(message, file=sys.stderr, flush=True)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, state = self.cfg, self.state
        summary = {}
        if not state.probed and (cfg.recipe == "linear-probe" or cfg.head_init == "probe"):
            summary = self._probe_phase()
        while state.epoch < cfg.epochs:
            train_loss = self._train_epoch()
            summary = {"kind": "epoch", "epoch": state.epoch, "step": state.global_step, "train_loss": train_loss}
            line = f"epoch {state.epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}"
            improved = self._validate(summary, state.epoch + 1)
            line += self._val_note(summary, improved)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            self._log(summary)
            self._save_checkpoint()
            self._say(line)
            if cfg.patience is not None and state.bad_epochs >= cfg.patience:
                reason = f"no better val {self.metric} in {cfg.patience} epochs"
                self._log({"kind": "stop", "epoch": state.epoch, "reason": reason})
                self._say(f"stopped early: {reason}")
                break
        if self.rank == 0:
            from vitkit.train.plots import plot_curves

            plot_curves(self.out / "log.jsonl", self.out / "curves.png", self.metric)
            best = "the probe" if state.best_epoch == 0 else f"epoch {state.best_epoch}"
            self._say(f"best: {best}, val {self.metric} {state.best_score:.1%}, saved to {self.out}" if self.val_set else
                      f"no validation images: the last model is saved to {self.out}")
        distributed.barrier()
        return summary

    def _validate(self, summary: dict, epoch: int) -> bool:
        """Validation metrics into `summary`; saves the model when it is the best so far (always without
        validation images). `epoch` counts from 1; 0 is the probe."""
        state, thresholds = self.state, ()
        if self.val_set is None:
            improved = True
        else:
            figures, score, thresholds = self._evaluate()
            summary.update(figures, val_score=score)
            improved = score > state.best_score
            state.best_score = max(state.best_score, score)
            state.bad_epochs = 0 if improved else state.bad_epochs + 1
        if improved:
            state.best_epoch = epoch
            self._save_model(thresholds)
        return improved

    def _val_note(self, summary: dict, improved: bool) -> str:
        if "val_score" not in summary:
            return "  (saved)"
        return f"  val {self.metric} {summary['val_score']:.1%}" + ("  (best, saved)" if improved else "")

    # -- the linear probe -------------------------------------------------------------------------------
    def _probe_phase(self) -> dict:
        """Solve the head on frozen features (rank 0; every rank receives it), evaluate it as epoch 0."""
        probe = self._fit_probe() if self.rank == 0 else None
        weight, bias = _head_tensors(probe, self.net)
        weight, bias = distributed.broadcast_from_rank0([weight, bias])
        with torch.no_grad():
            for name in ("head", "head_dist"):  # distilled: both heads, whose mean is the probe's logits
                if hasattr(self.net, name):
                    getattr(self.net, name).weight.copy_(weight)
                    getattr(self.net, name).bias.copy_(bias)
        if self.ema:
            self.ema = EMA(self.net, self.cfg.ema)
        summary = {"kind": "probe", "epoch": 0, "step": 0}
        if probe is not None:
            summary.update(l2=probe.l2, selection=probe.selection,
                           grid=[[p.l2, p.score, p.loss] for p in probe.grid])
            self._say(probe.describe())
        improved = self._validate(summary, 0)
        self.state.probed = True
        self._log(summary)
        self._save_checkpoint()
        self._say("probe" + self._val_note(summary, improved))
        return summary

    def _fit_probe(self) -> Probe:
        cfg = self.cfg
        extractor = FeatureExtractor(self.net, self.device, self.micro * 2, cfg.workers)
        items = self.train_set.items
        views = [(eval_transform(self.spec), "train")] + \
            [(self.train_set.transform, f"train, augmented view {v}") for v in range(1, cfg.views + 1)]
        train_x = torch.cat([extractor.features(items, t, cfg.seed, v, what) for v, (t, what) in enumerate(views)])
        train_y = self._targets(self.train_set, items * len(views))
        val_x = val_y = None
        if self.val_set is not None:
            val_x = extractor.features(self.val_set.items, eval_transform(self.spec), cfg.seed, 0, "validation")
            val_y = self._targets(self.val_set, self.val_set.items)
        readable = ~train_x.isnan().any(dim=1)
        if not readable.all():
            self._say(f"warning: {int((~readable).sum())} training views could not be read and are left out "
                      "of the probe")
        smoothing = 0.0 if cfg.recipe == "linear-probe" else cfg.label_smoothing  # LP-FT: the FT loss's optimum
        return fit_probe(train_x[readable], train_y[readable], len(self.labels), val_x, val_y,
                         label_smoothing=smoothing)

    def _targets(self, dataset: LabelledImages, items: list) -> torch.Tensor:
        """Class indices (N,), or multi-hot (N, C) for a multi-label run."""
        values = [dataset.target(label) for _, label in items]
        return torch.stack(values) if self.cfg.multi_label else torch.tensor(values)

    def _batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches for the rest of the epoch: global batch b is order[b*B:(b+1)*B]; rank r
        takes its contiguous slice of it, cut into `grad_accum` micro-batches."""
        order = epoch_order(len(self.train_set), self.cfg.seed, epoch)
        B, per_rank = self.cfg.batch_size, self.cfg.batch_size // self.world
        plan = []
        for step in range(self.state.step_in_epoch, self.steps_per_epoch):
            mine = order[step * B + self.rank * per_rank: step * B + (self.rank + 1) * per_rank]
            plan += [mine[i:i + self.micro] for i in range(0, per_rank, self.micro)]
        return plan

    def _train_epoch(self) -> float:
        cfg, state = self.cfg, self.state
        self.train_set.set_epoch(self._view(state.epoch))
        # its own generator: creating the iterator must not draw from the global RNG (drop path uses it)
        loader = DataLoader(self.train_set, batch_sampler=self._batches(state.epoch), num_workers=cfg.workers,
                            worker_init_fn=die_with_parent,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.epoch))
        self.model.train()
        seen, start = 0, time.perf_counter()
        remaining = self.steps_per_epoch - state.step_in_epoch
        bar = tqdm(total=remaining, desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="step", file=sys.stderr,
                   disable=self.rank != 0, dynamic_ncols=True, leave=False)
        micro_batches = iter(loader)
        for _ in range(remaining):
            set_lr(self.optimizer, lr_at(state.global_step, cfg.lr, self.warmup_steps, self.total_steps, cfg.min_lr))
            loss = self._step([next(micro_batches) for _ in range(cfg.grad_accum)])
            state.epoch_loss_sum += loss
            seen += cfg.batch_size
            state.global_step, state.step_in_epoch = state.global_step + 1, state.step_in_epoch + 1
            img_s = seen / (time.perf_counter() - start)
            self._log({"kind": "step", "epoch": state.epoch, "step": state.global_step, "loss": loss,
                       "lr": self.optimizer.param_groups[-1]["lr"], "img_s": round(img_s, 2)})
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.1f}")
            bar.update(1)
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 \
                    and state.step_in_epoch < self.steps_per_epoch:
                self._save_checkpoint()
        bar.close()
        mean, state.epoch_loss_sum = state.epoch_loss_sum / self.steps_per_epoch, 0.0
        return mean

    def _step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the global batch's mean loss."""
        cfg, total = self.cfg, torch.zeros((), dtype=torch.float64)
        for i, (pixels, targets) in enumerate(micro_batches):
            pixels = pixels.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            soft = self._soft_targets(pixels, targets, i)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
            with sync, autocast(self.device.type, cfg.amp):
                loss = soft_cross_entropy(self.model(soft[0]).float(), soft[1]) if soft else \
                    self._loss(pixels, targets)
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += scaled.detach().double().cpu()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.requires_grad], cfg.clip_grad)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.net)
        return distributed.mean_over_ranks(float(total))

    def _soft_targets(self, pixels, targets, micro: int):
        """Mixup/cutmix pairs samples within this rank's micro-batch: with it on, a DDP run is a valid
        run but not bit-identical to a single-process one (without it, it is)."""
        cfg = self.cfg
        if not (cfg.mixup or cfg.cutmix):
            return None
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.state.global_step * 131 + micro
                                                  + self.rank * 7919)
        return mixup_cutmix(pixels, targets, len(self.labels), cfg.mixup, cfg.cutmix, 1.0, 0.5,
                            cfg.label_smoothing, generator)

    def _eval_net(self) -> VisionTransformer:
        return self.ema.net if self.ema else self.net

    # -- files ------------------------------------------------------------------------------------------
    def _log(self, row: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def _save_model(self, thresholds: list[float] | tuple[float, ...] = ()) -> None:
        """The model being evaluated, as the output folder; a multi-label head with `thresholds` (tuned on
        validation; none: 0.5 for every class)."""
        if self.rank == 0:
            net = self._eval_net()
            if self.cfg.multi_label:
                net.config = net.config.replace(thresholds=tuple(thresholds))
            save_folder(net, self.spec, self.out)
            write_model_card(self.out, self._model_card())

    def _model_card(self) -> str:
        """README.md for the saved (best) model: base, data, recipe, its validation figures, how to load it."""
        cfg, state = self.cfg, self.state
        val = len(self.val_set) if self.val_set is not None else 0
        metrics = {f"validation {self.metric}": state.best_score} if self.val_set is not None else {}
        metrics["saved at"] = "the linear probe" if state.best_epoch == 0 else f"epoch {state.best_epoch}"
        recipe = {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out", "device", "workers")}
        for name, digest in (self.base_provenance.get("sha256") or {}).items():
            recipe[f"base weights {name} sha256"] = digest
        if self.base_provenance.get("commit"):
            recipe["base hub commit"] = self.base_provenance["commit"]
        arch = cfg.arch or (MODELS[cfg.model].arch if cfg.model in MODELS else None)
        summary = (f"An image classifier of {len(self.labels)} classes ({', '.join(self.labels[:10])}"
                   f"{', ...' if len(self.labels) > 10 else ''}) {self._made_by()} on {cfg.data}: "
                   f"{len(self.train_set)} training images, {val} validation images.")
        return model_card(title=f"{Path(cfg.out).name}: fine-tuned from {cfg.model or cfg.arch}",
                          base_model=cfg.model, summary=summary, recipe=recipe, metrics=metrics,
                          how_to_load=hf_folder_loading(str(self.out), arch, len(self.labels)))

    def _save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        target = self.out / CHECKPOINT
        tmp = atomic_path(target)
        try:
            torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None,
                        "ema": self.ema.state_dict() if self.ema else None, "state": vars(self.state).copy(),
                        "rng": torch.get_rng_state(), "config": self.cfg.to_dict(), "labels": self.labels}, tmp)
            publish(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)  # as write_atomic_bytes: no stray temporary file when saving fails

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"nothing to resume: no {path} (start without --resume)")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        now = self.cfg.to_dict()
        same_data = Path(saved["config"]["data"]).resolve() == Path(now["data"]).resolve()
        changed = sorted(k for k, v in saved["config"].items() if k not in TrainConfig.RESUMABLE_CHANGES
                         and k != "data" and now.get(k) != v) + ([] if same_data else ["data"])
        if changed:
            raise ValueError(f"--resume with other settings than the interrupted run: {', '.join(changed)}")
        if saved["labels"] != self.labels:
            raise ValueError("--resume over a dataset with other classes than the interrupted run")
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema and saved["ema"]:
            self.ema.load_state_dict(saved["ema"])
        self.state = State(**saved["state"])
        torch.set_rng_state(saved["rng"])
        if self.rank == 0:
            _truncate_log(self.out / "log.jsonl", self.state.global_step, self.state.epoch)


def _val_set(items: list, spec, seed: int, num_classes: int) -> LabelledImages | None:
    """Validation images that cannot be read are left out (with a warning), never substituted: a
    substitute would be counted twice."""
    bad = find_bad_images(items)
    if bad:
        print(f"warning: {len(bad)} validation images left out, e.g. {next(iter(bad.items()))}", file=sys.stderr)
    kept = [item for item in items if item[0] not in bad]
    return LabelledImages(kept, eval_transform(spec), seed, on_error="raise", num_classes=num_classes) if kept else None


def _head_tensors(probe: Probe | None, net: VisionTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's head on this rank, or zeros of its shape (to be filled by a broadcast from rank 0)."""
    if probe is not None:
        return probe.weight.to(net.head.weight.device), probe.bias.to(net.head.bias.device)
    return torch.zeros_like(net.head.weight), torch.zeros_like(net.head.bias)


def _truncate_log(log: Path, step: int, epoch: int) -> None:
    """Drops what an interrupted run logged after its last checkpoint, so the log reads as one run (the
    probe's row stays: a checkpoint exists only once the probe is done)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "probe" or (row["kind"] == "step" and row["step"] <= step) or \
                (row["kind"] not in ("step", "probe") and row["epoch"] < epoch):
            kept.append(line)
    write_atomic_text("".join(line + "\n" for line in kept), log)
