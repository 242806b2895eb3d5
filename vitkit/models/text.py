"""The text tower of CLIP, OpenCLIP, SigLIP and SigLIP 2: one small transformer over token ids, configured by
`vitkit.config.TextConfig` (causal + end-of-text pooling for CLIP, bidirectional + last-token head for SigLIP).
Its blocks are the ViT's `Block`; it also holds the pair's learned logit scale (and SigLIP's bias), so that
`logits(image_embeddings, text_embeddings)` is the image-text model's output.

  forward(ids)                 -> text embeddings in the shared space, not normalised     (N, P)
  logits(images, texts)        -> scale * cos(image, text) (+ bias)                        (B, N)
  probabilities(logits)        -> softmax over the texts (CLIP) or a sigmoid each (SigLIP)

Try it:  python -c "import torch; from vitkit.config import TextConfig; from vitkit.models.text import \
TextTransformer; print(TextTransformer(TextConfig(depth=2))(torch.randint(0, 49407, (2, 77))).shape)"
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from vitkit.config import TextConfig
from vitkit.models.layers import Block, init_linear_layers


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = cfg = config
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        block = cfg.block_config()
        self.blocks = nn.ModuleList(Block(block) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        if cfg.proj_dim:
            self.proj = nn.Linear(cfg.width, cfg.proj_dim, bias=cfg.proj_bias)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07), CLIP's initial temperature
        if cfg.logit_bias:
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # SigLIP's initial bias
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_layers(self)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def weights_digest(self) -> str:
        """A digest of every weight (names, shapes, values): what text vectors depend on besides the tokenizer."""
        digest = hashlib.blake2b(digest_size=12)
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def set_fused_attention(self, fused: bool) -> None:
        for block in self.blocks:
            block.attn.fused = fused

    def _mask(self, length: int, like: torch.Tensor) -> torch.Tensor | None:
        """(1, 1, L, L) additive causal mask (-inf above the diagonal) for CLIP, None for SigLIP."""
        if not self.config.causal:
            return None
        mask = torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu(1)
        return mask[None, None]  # (1, 1, L, L)

    def _pool(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Tokens (N, L, D) -> the pooled token (N, D): CLIP's first end-of-text token (or, in configs from
        before transformers fixed its eos id, the highest id, which is the end-of-text token too), SigLIP's
        last position."""
        pool = self.config.pool
        if pool == "last":
            return tokens[:, -1]
        keys = ids.int() if pool == "argmax" else (ids == self.config.eos_id).int()  # argmax: first maximum
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), keys.argmax(dim=-1)]

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L), L <= context_length -> tokens after the final norm (N, L, D)."""
        length = ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"{length} tokens, more than the text tower's {self.config.context_length}")
        x = self.token_embed(ids) + self.pos_embed[:, :length]  # (N, L, D)
        mask = self._mask(length, x)
        for block in self.blocks:
            x, _ = block(x, mask)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> text embeddings (N, P), not normalised (transformers' get_text_features)."""
        pooled = self._pool(self.forward_features(ids), ids)  # (N, D)
        return self.proj(pooled) if self.config.proj_dim else pooled

    def logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, P) and text embeddings (N, P), either normalised or not -> logits (B, N):
        exp(logit_scale) * cosine (+ logit_bias), the image-text model's logits_per_image."""
        images = nn.functional.normalize(images.float(), dim=-1)
        texts = nn.functional.normalize(texts.float(), dim=-1)
        logits = images @ texts.T * self.logit_scale.float().exp()  # (B, N)
        return logits + self.logit_bias.float() if self.config.logit_bias else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) -> how each model family scores its texts: CLIP a softmax over the N texts, SigLIP
        (trained with a sigmoid loss) an independent probability per text."""
        return logits.sigmoid() if self.config.logit_bias else logits.softmax(dim=-1)
