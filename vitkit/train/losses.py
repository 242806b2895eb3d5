"""The fine-tuning losses: cross-entropy (hard or mixup/cutmix soft targets) for one label per image, binary
cross-entropy or the asymmetric loss for several.

The asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021) with the
paper's settings: positives weighted as in BCE (gamma+ 0), negatives by p^4 (gamma- 4) after shifting their
probability down by 0.05 (a negative scored below 0.05 costs nothing): most labels of most images are easy
negatives, and BCE spends its gradient on them. Both multi-label losses average over images and classes.

Try it:  python -c "import torch; from vitkit.train.losses import asymmetric_loss; \
print(asymmetric_loss(torch.zeros(2, 3), torch.eye(2, 3)))"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (B, C) whose rows sum to 1."""
    return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = ASL_GAMMA_NEG,
                    gamma_pos: float = ASL_GAMMA_POS, clip: float = ASL_CLIP) -> torch.Tensor:
    """ASL of logits (B, C) against multi-hot targets (B, C), averaged over all entries."""
    p = torch.sigmoid(logits)
    shifted = (p - clip).clamp(min=0)  # negatives' probability, shifted down by the margin
    log_p = F.logsigmoid(logits)
    log_not = torch.log((1 - shifted).clamp(min=1e-8))
    positive = targets * (1 - p).pow(gamma_pos) * log_p
    negative = (1 - targets) * shifted.pow(gamma_neg) * log_not
    return -(positive + negative).mean()


def multi_label_loss(name: str):
    """(logits, multi-hot targets) -> loss for --multi-label-loss `name` ("bce" or "asl")."""
    if name == "asl":
        return asymmetric_loss
    if name == "bce":
        return lambda logits, targets: F.binary_cross_entropy_with_logits(logits, targets)
    raise ValueError(f"unknown multi-label loss {name!r}: choose bce or asl")
