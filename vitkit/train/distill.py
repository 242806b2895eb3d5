"""Knowledge distillation: `vitkit distill DATA --teacher T --student S --out DIR` trains the student to match the
teacher's outputs, with every piece of fine-tuning (vitkit.train.trainer: LP-FT, exact resume, DDP, AMP, EMA,
logs, curves, best model, model card); the output is the same transformers / vitkit folder.

The data: any folder of images (or a labelled set whose class names are among the teacher's labels: then their
cross-entropy joins in, weighted --hard-weight). Unlabelled images are the usual case: the teacher labels them.

Consistent views (Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022):
teacher and student see the same augmented pixels. The teacher's logits are computed once per image and view
and cached (vitkit.train.features, $VITKIT_CACHE_DIR/features): view 0 is the eval view (the probe's pseudo-
labels, validation), views 1..N the run's train augmentation, and epoch e trains on view 1 + e mod N. A
teacher with other preprocessing sees the student's pixels re-normalised to its mean/std and resized (bicubic,
antialiased) to its input size (`SpecAdapter`).

The loss: KL(teacher || student) at --temperature (times T^2), plus --hard-weight x cross-entropy with the
data's labels where they exist. A student with a distillation token (DeiT) trains DeiT's way: its class head on
the labels (or, without labels, the soft targets), its distillation head on the teacher's hard labels; the two
are averaged at inference. The best model is chosen by validation top-1 with labels, else by top-1 agreement
with the teacher. At the end report.json compares student and teacher: agreement, accuracy, parameters, size,
and speed measured in the same run on the same device.

Try it:  python -m pytest tests/test_distill.py -q
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitkit.api import load as load_model
from vitkit.batch import distributed
from vitkit.checkpoints.io import write_atomic_text
from vitkit.config import PreprocessSpec
from vitkit.data.labelled import DatasetError, Splits, _split_key, discover
from vitkit.data.sources import walk_images
from vitkit.data.workers import die_with_parent
from vitkit.train.augment import eval_transform
from vitkit.train.config import DistillConfig
from vitkit.train.evaluate import autocast
from vitkit.train.features import FeatureExtractor
from vitkit.train.trainer import Trainer

UNLABELLED = -1
SPEED_REPEATS = 5


class SpecAdapter:
    """Pixels prepared for the student's spec -> the same view prepared for the teacher's: undo the student's
    normalisation, apply the teacher's, resize to its input size (bicubic, antialiased) when it differs."""

    def __init__(self, student: PreprocessSpec, teacher: PreprocessSpec):
        self.size = teacher.input_size if teacher.input_size != student.input_size else None
        self.scale = torch.tensor(student.std) / torch.tensor(teacher.std)  # (3,)
        self.shift = (torch.tensor(student.mean) - torch.tensor(teacher.mean)) / torch.tensor(teacher.std)
        self.description = (f"mean {student.mean}->{teacher.mean}, std {student.std}->{teacher.std}, "
                            f"size {student.input_size}->{teacher.input_size}")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(pixels.device)[:, None, None]
        shift = self.shift.to(pixels.device)[:, None, None]
        out = pixels * scale + shift  # (B, 3, S, S): x * std_s + mean_s, then (- mean_t) / std_t
        if self.size:
            out = F.interpolate(out, size=(self.size, self.size), mode="bicubic", align_corners=False,
                                antialias=True)
        return out

    def __repr__(self) -> str:
        return f"SpecAdapter({self.description})"


def same_view(student: PreprocessSpec, teacher: PreprocessSpec) -> bool:
    return (student.input_size, tuple(student.mean), tuple(student.std)) == \
        (teacher.input_size, tuple(teacher.mean), tuple(teacher.std))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, times T^2 (so gradients keep their scale)."""
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2


class Distiller(Trainer):
    def __init__(self, cfg: DistillConfig, resume: bool = False, overwrite: bool = False):
        if not cfg.teacher:
            raise ValueError("distillation needs a teacher: --teacher MODEL")
        if cfg.multi_label or cfg.mixup or cfg.cutmix:
            raise ValueError("distillation matches the teacher's single-label outputs on consistent views: leave "
                             "--multi-label, --mixup and --cutmix off")
        self.teacher = load_model(cfg.teacher, cfg.teacher_arch, device="cpu")
        if not self.teacher.config.num_classes:
            raise ValueError(f"the teacher {cfg.teacher} has no classifier head: there is nothing to distil")
        super().__init__(cfg, resume, overwrite)

    # -- the data: DATA's images, labelled where DATA's classes are the teacher's --------------------------------
    def _splits(self, cfg: DistillConfig) -> Splits:
        """Items (path, row): a sample's label is its row, which finds its teacher logits and its true label."""
        teacher_labels = list(self.teacher.labels)
        labelled = None
        try:
            labelled = discover(cfg.data, cfg.val_split, cfg.seed)
        except DatasetError:
            pass  # a flat or nested folder of images: unlabelled
        if labelled is not None and not set(labelled.labels) <= set(teacher_labels):
            unknown = sorted(set(labelled.labels) - set(teacher_labels))
            self._say(f"warning: {cfg.data}'s classes ({', '.join(unknown[:3])} ...) are not the teacher's labels: "
                      "its images are distilled without labels")
            labelled = None
        if labelled is not None:
            index = [teacher_labels.index(name) for name in labelled.labels]  # DATA's class -> the teacher's
            train, val = ([(p, index[c]) for p, c in labelled.train], [(p, index[c]) for p, c in labelled.val])
        else:
            paths = walk_images(cfg.data)
            if not paths:
                raise DatasetError(f"{cfg.data}: no images")
            ranked = sorted(paths, key=lambda p: _split_key(cfg.seed, p, cfg.data))
            count = min(len(paths) - 1, round((cfg.val_split or 0) * len(paths)))
            train = [(p, UNLABELLED) for p in sorted(ranked[count:])]
            val = [(p, UNLABELLED) for p in sorted(ranked[:count])]
        self.train_truth = torch.tensor([label for _, label in train])  # (N,) teacher index or UNLABELLED
        self.val_truth = torch.tensor([label for _, label in val], dtype=torch.long)
        self.labelled = labelled is not None
        rows = lambda items: [(path, row) for row, (path, _) in enumerate(items)]  # noqa: E731
        return Splits(rows(train), rows(val), teacher_labels, layout="labelled" if self.labelled else "images")

    def _prepare(self) -> None:
        """The teacher's logits on every view, computed on rank 0 (then read from the cache by the others)."""
        cfg = self.cfg
        self.hard_weight = cfg.hard_weight if cfg.hard_weight is not None else (0.5 if self.labelled else 0.0)
        self.metric = "top-1" if self.labelled else "teacher agreement"
        self.teacher.net.to(self.device)
        self.adapt = None if same_view(self.spec, self.teacher.spec) else SpecAdapter(self.spec, self.teacher.spec)
        extractor = FeatureExtractor(self.teacher.net, self.device, self.micro * 2, cfg.workers,
                                     outputs="logits", adapt=self.adapt)
        clean = eval_transform(self.spec)

        def logits() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
            train = self.train_set.items
            views = [extractor.features(train, self.train_set.transform, cfg.seed, v, f"teacher: training view {v}")
                     for v in range(1, cfg.teacher_views + 1)]
            plain = extractor.features(train, clean, cfg.seed, 0, "teacher: training images")
            val = (extractor.features(self.val_set.items, clean, cfg.seed, 0, "teacher: validation")
                   if self.val_set is not None else None)
            return plain, views, val

        if self.rank == 0:
            self.teacher_plain, self.teacher_views, self.teacher_val = logits()
        distributed.barrier()
        if self.rank != 0:
            self.teacher_plain, self.teacher_views, self.teacher_val = logits()

    def _view(self, epoch: int) -> int:
        return 1 + epoch % self.cfg.teacher_views

    def _targets(self, dataset, items: list) -> torch.Tensor:
        """The probe's labels: the teacher's top-1 on the plain view."""
        source = self.teacher_val if dataset is self.val_set else self.teacher_plain
        return source[[row for _, row in items]].argmax(dim=-1)

    # -- the loss ------------------------------------------------------------------------------------------------
    def _loss(self, pixels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        heads = [h.float() for h in self.model(pixels, separate_heads=True)]  # [(B, C)] or class + distillation
        teacher = self.teacher_views[self._view(self.state.epoch) - 1][rows.cpu()].to(heads[0].device)  # (B, C)
        truth = self.train_truth[rows.cpu()].to(heads[0].device)  # (B,)
        known = truth != UNLABELLED

        def hard(logits: torch.Tensor) -> torch.Tensor:
            if not known.any():
                return logits.sum() * 0.0  # keeps the graph (DDP) without a term
            return F.cross_entropy(logits[known], truth[known], label_smoothing=cfg.label_smoothing)

        if len(heads) == 2:  # DeiT: the distillation head learns the teacher's hard labels
            student = hard(heads[0]) if self.labelled else kd_loss(heads[0], teacher, cfg.temperature)
            return (student + F.cross_entropy(heads[1], teacher.argmax(dim=-1))) / 2
        soft = kd_loss(heads[0], teacher, cfg.temperature)
        return (1 - self.hard_weight) * soft + self.hard_weight * hard(heads[0]) if self.hard_weight else soft

    # -- validation: agreement with the teacher, accuracy with labels ------------------------------------------
    @torch.no_grad()
    def _student_logits(self, net, dataset) -> torch.Tensor:
        was_training = net.training
        net.eval()
        loader = DataLoader(dataset, batch_size=self.micro * 2, shuffle=False, num_workers=self.cfg.workers,
                            worker_init_fn=die_with_parent)
        out = []
        for pixels, _ in loader:
            with autocast(self.device.type, self.cfg.amp):
                out.append(net(pixels.to(self.device)).float().cpu())
        net.train(was_training)
        return torch.cat(out)  # (N, C)

    def _evaluate(self) -> tuple[dict, float, tuple[float, ...]]:
        student = self._student_logits(self._eval_net(), self.val_set)
        figures = agreement_figures(student, self.teacher_val, self.val_truth, self.cfg.temperature)
        figures = {f"val_{k}": v for k, v in figures.items()}
        return figures, figures["val_top1"] if self.labelled else figures["val_agreement"], ()

    def _made_by(self) -> str:
        return f"distilled by `vitkit distill` from {self.cfg.teacher}"

    # -- the report ----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        summary = super().fit()
        if self.rank == 0 and self.val_set is not None:
            report = self.report()
            write_atomic_text(json.dumps(report, indent=2) + "\n", self.out / "report.json")
            s, t = report["student"], report["teacher"]
            accuracy = (f", top-1 {s['top1']:.1%} (teacher {t['top1']:.1%})" if s.get("top1") is not None else "")
            self._say(f"student vs teacher on {report['validation_images']} validation images: agreement "
                      f"{s['agreement']:.1%}{accuracy}; {s['parameters'] / 1e6:.2f}M vs {t['parameters'] / 1e6:.2f}M "
                      f"parameters; {s['img_s']:.0f} vs {t['img_s']:.0f} img/s ({report['speedup']:.1f}x) on "
                      f"{self.device.type}; report.json in {self.out}")
        return summary

    def report(self) -> dict:
        """Student (the saved best model) vs teacher on the validation images, both timed here and now."""
        from vitkit.api import load

        saved = load(str(self.out), device=str(self.device))
        student = self._student_logits(saved.net, self.val_set)
        figures = agreement_figures(student, self.teacher_val, self.val_truth, self.cfg.temperature)
        pixels = torch.stack([self.val_set[i][0] for i in range(min(len(self.val_set), self.micro * 2))])
        teacher_top1 = None
        if self.labelled:
            teacher_top1 = (self.teacher_val.argmax(dim=-1) == self.val_truth).double().mean().item()
        student_speed = _images_per_second(saved.net, pixels)
        teacher_speed = _images_per_second(self.teacher.net, self.adapt(pixels) if self.adapt else pixels)
        return {
            "validation_images": len(self.val_set),
            "student": {**figures, "model": str(self.out), "parameters": _parameters(saved.net),
                        "img_s": student_speed},
            "teacher": {"model": self.cfg.teacher, "top1": teacher_top1, "parameters": _parameters(self.teacher.net),
                        "img_s": teacher_speed},
            "speedup": student_speed / teacher_speed, "device": self.device.type, "batch": len(pixels),
        }


def agreement_figures(student: torch.Tensor, teacher: torch.Tensor, truth: torch.Tensor, temperature: float) -> dict:
    """top-1 agreement and KL to the teacher of student logits (N, C); top-1 against `truth` where it is known."""
    known = truth != UNLABELLED
    out = {"agreement": (student.argmax(dim=-1) == teacher.argmax(dim=-1)).double().mean().item(),
           "kl": kd_loss(student, teacher, temperature).item() / temperature ** 2}
    out["top1"] = (student[known].argmax(dim=-1) == truth[known]).double().mean().item() if known.any() else None
    return out


def _parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.inference_mode()
def _images_per_second(net, pixels: torch.Tensor) -> float:
    """Best of SPEED_REPEATS forward passes over `pixels` (after one warm-up), eval mode, fp32."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    pixels = pixels.to(device)
    net(pixels)
    best = float("inf")
    for _ in range(SPEED_REPEATS):
        start = time.perf_counter()
        net(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    net.train(was_training)
    return len(pixels) / best

