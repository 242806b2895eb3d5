"""The choices and defaults of an explanation (methods, head fusions, readouts, contact-sheet tiles), torch-free so
that `vitkit --help` stays fast; maps.py and sheet.py implement them.

Try it:  python -c "from vitkit.explain.options import METHODS, READOUTS; print(METHODS, READOUTS)"
"""

METHODS = ("rollout", "attention")
HEAD_FUSIONS = ("mean", "max", "min")
# auto: the rows the classifier reads: the class token (ViT, DeiT); the mean of the class and distillation
# tokens for distilled DeiT (its two heads are averaged); the mean of the patch tokens for mean-pooled
# models (BEiT). cls / dist / patches pick one of those explicitly.
READOUTS = ("auto", "cls", "dist", "patches")
COLUMNS, ROWS = 10, 10  # contact-sheet tiles per page
