"""Position resampling against the reference implementations' own functions."""

from __future__ import annotations

import pytest
import torch

from vitkit.models.pos_embed import relative_position_index, resample_abs_pos_embed, resample_rel_pos_table


@pytest.mark.parametrize("grid", [(4, 4), (14, 14), (3, 5)])
def test_relative_position_index_matches_transformers(grid):
    beit = pytest.importorskip("transformers.models.beit.modeling_beit")
    expected = beit.BeitRelativePositionBias.generate_relative_position_index(grid)
    assert torch.equal(relative_position_index(grid), expected)


@pytest.mark.parametrize(("old", "new"), [(14, 18), (14, 24), (4, 6), (24, 14)])
def test_geometric_table_resize_matches_timm(old, new):
    from reference_timm import import_timm

    try:
        import_timm()
    except ImportError as err:
        pytest.skip(f"timm is not installed: {err}")
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    table = torch.randn((2 * old - 1) ** 2 + 3, 5)
    expected = resize_rel_pos_bias_table(table, (new, new), ((2 * new - 1) ** 2 + 3, 5))
    mine = resample_rel_pos_table(table, (old, old), (new, new), "geometric")
    assert mine.shape == expected.shape
    assert (mine - expected).abs().max() < 1e-5


def test_bilinear_table_resize_matches_transformers():
    beit = pytest.importorskip("transformers.models.beit.modeling_beit")
    from transformers import BeitConfig

    config = BeitConfig(hidden_size=48, num_attention_heads=3, image_size=64, patch_size=16,
                        use_relative_position_bias=True)
    module = beit.BeitRelativePositionBias(config)  # window 64 // 16 = 4
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
        expected = module((6, 6), interpolate_pos_encoding=True, dim_size=37)[0]  # (heads, 37, 37)
    table = resample_rel_pos_table(module.relative_position_bias_table.detach(), (4, 4), (6, 6), "bilinear")
    mine = table[relative_position_index((6, 6)).view(-1)].view(37, 37, 3).permute(2, 0, 1)
    assert (mine - expected).abs().max() < 1e-6


def test_cls_rows_are_kept_and_same_size_is_identity():
    table = torch.randn(7 * 7 + 3, 2)
    assert resample_rel_pos_table(table, (4, 4), (4, 4)) is table
    bigger = resample_rel_pos_table(table, (4, 4), (8, 8))
    assert torch.equal(bigger[-3:], table[-3:])
    with pytest.raises(ValueError, match="unknown relative-position resize"):
        resample_rel_pos_table(table, (4, 4), (8, 8), "nearest")


@pytest.mark.parametrize("antialias", [True, False])
def test_abs_resample_keeps_prefix_tokens_and_matches_plain_interpolation(antialias):
    pos = torch.randn(1, 2 + 16, 8)
    out = resample_abs_pos_embed(pos, (6, 6), num_prefix_tokens=2, antialias=antialias)
    assert out.shape == (1, 2 + 36, 8) and torch.equal(out[:, :2], pos[:, :2])
    grid = pos[:, 2:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)  # (1, D, 4, 4)
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False,
                                               antialias=antialias).permute(0, 2, 3, 1).reshape(1, 36, 8)
    assert torch.allclose(out[:, 2:], expected)
