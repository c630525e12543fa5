"""Vision side: official key/shape table, output shapes (official on meta, tiny on CPU), small semantics."""
import json

import pytest
import torch

from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.vision import (
    ClipEncoder,
    Projector,
    SamEncoder,
    fuse,
    relative_positions,
    window_partition,
    window_unpartition,
)

PREFIXES = {"model.sam_model.": SamEncoder, "model.vision_model.": ClipEncoder, "model.projector.": Projector}


@pytest.fixture(scope="module")
def official():
    cfg = load_preset("official")
    with torch.device("meta"):
        return cfg, SamEncoder(cfg.sam), ClipEncoder(cfg.clip), Projector(cfg.projector)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    return cfg, SamEncoder(cfg.sam).eval(), ClipEncoder(cfg.clip).eval(), Projector(cfg.projector).eval()


def test_official_keys_and_shapes_equal_checkpoint_table(official, shared):
    _, sam, clip, proj = official
    table = json.loads((shared / "data/deepseek-ocr/weight_shapes.json").read_text())["shapes"]
    expected = {k: v for k, v in table.items() if k.startswith(tuple(PREFIXES))}
    ours = {}
    for prefix, module in zip(PREFIXES, (sam, clip, proj)):
        ours.update({prefix + k: list(t.shape) for k, t in module.state_dict().items()})
    assert set(ours) == set(expected)
    assert ours == expected
    # SAM: patch conv w+b, pos_embed; 14 tensors per block; neck 6; net_2, net_3
    assert len([k for k in ours if k.startswith("model.sam_model.")]) == 3 + 12 * 14 + 6 + 2
    # CLIP: class, patch conv, positions, pre_layrnorm w+b; 12 tensors per layer
    assert len([k for k in ours if k.startswith("model.vision_model.")]) == 5 + 24 * 12
    # doc §2 parameter totals
    assert sum(t.numel() for t in sam.parameters()) == 95_569_152
    assert sum(t.numel() for t in clip.parameters()) == 303_177_728
    assert sum(t.numel() for t in proj.parameters()) == 2_622_720


def test_rel_pos_tables_windowed_27_global_127(official):
    _, sam, _, _ = official
    rows = [sam.blocks[i].attn.rel_pos_h.shape[0] for i in range(12)]
    assert rows == [27, 27, 127, 27, 27, 127, 27, 27, 127, 27, 27, 127]


@pytest.mark.parametrize("side,grid,tokens", [(1024, 16, 257), (640, 10, 101)])
def test_official_output_shapes_on_meta(official, side, grid, tokens):
    cfg, sam, clip, proj = official
    with torch.device("meta"):
        features = sam(torch.empty(2, 3, side, side))
        clip_out = clip(features)
        projected = proj(fuse(clip_out, features))
    assert features.shape == (2, 1024, grid, grid)
    assert clip_out.shape == (2, tokens, 1024)
    assert projected.shape == (2, grid * grid, 1280)


@pytest.mark.parametrize("side,grid", [(1024, 16), (640, 10)])
def test_tiny_forward_on_cpu(tiny, side, grid):
    cfg, sam, clip, proj = tiny
    with torch.no_grad():
        features = sam(torch.randn(1, 3, side, side))
        clip_out = clip(features)
        projected = proj(fuse(clip_out, features))
    assert features.shape == (1, 64, grid, grid)
    assert clip_out.shape == (1, 1 + grid * grid, 64)
    assert projected.shape == (1, grid * grid, 64)
    assert torch.isfinite(projected).all()


def test_init_is_deterministic_under_manual_seed():
    cfg = load_preset("tiny")
    torch.manual_seed(7)
    a = SamEncoder(cfg.sam).state_dict()
    torch.manual_seed(7)
    b = SamEncoder(cfg.sam).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["pos_embed"].abs().sum() > 0 and a["blocks.0.attn.rel_pos_h"].abs().sum() > 0


def test_relative_positions_gathers_offset_rows():
    table = torch.arange(5.0)[:, None].repeat(1, 2)   # L = 3: rows for offsets -2..2
    out = relative_positions(table, 3)
    assert out.shape == (3, 3, 2)
    # out[q, k] = row (q - k + 2)
    assert out[..., 0].tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]


def test_relative_positions_interpolates_linearly_for_other_sides():
    table = torch.arange(7.0)[:, None]                # stored for L = 4 (7 rows), used at side 2 (3 rows)
    out = relative_positions(table, 2)
    # linear, align_corners=False, 7 -> 3 samples: source x = (i + 0.5) * 7/3 - 0.5 = 0.667, 3.0, 5.333
    assert out[..., 0] == pytest.approx(torch.tensor([[3.0, 2 / 3], [16 / 3, 3.0]]), abs=1e-5)


def test_window_partition_pads_with_zeros_and_round_trips():
    x = torch.randn(2, 10, 10, 3) + 5.0               # 10 -> padded to 14, one window per image
    windows = window_partition(x, 14)
    assert windows.shape == (2, 14, 14, 3)
    assert windows[:, 10:].abs().sum() == 0 and windows[:, :, 10:].abs().sum() == 0
    assert torch.equal(window_unpartition(windows, 14, 10, 10), x)
    y = torch.randn(1, 40, 40, 3)                     # 640 px grid: 3x3 windows of 14 over 42x42
    assert window_partition(y, 14).shape == (9, 14, 14, 3)
    assert torch.equal(window_unpartition(window_partition(y, 14), 14, 40, 40), y)


def test_fuse_is_clip_without_cls_then_sam_row_major():
    clip_out = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)          # CLS + 2x2 grid, width 3
    sam = torch.arange(2 * 4 * 2 * 2.0).reshape(2, 4, 2, 2) + 100  # 4 channels, 2x2 grid
    fused = fuse(clip_out, sam)
    assert fused.shape == (2, 4, 7)
    assert torch.equal(fused[:, :, :3], clip_out[:, 1:])
    # token 1 = row 0, column 1 of the SAM map
    assert torch.equal(fused[0, 1, 3:], sam[0, :, 0, 1])


def test_clip_ignores_its_patch_conv_and_keeps_cls_position(tiny):
    _, sam, clip, _ = tiny
    features = torch.randn(1, 64, 10, 10)
    with torch.no_grad():
        before = clip(features)
        saved = clip.embeddings.patch_embedding.weight.clone()
        clip.embeddings.patch_embedding.weight.normal_()
        after = clip(features)
        clip.embeddings.patch_embedding.weight.copy_(saved)
        positions = clip.embeddings.positions(10, 10)
    assert torch.equal(before, after)
    assert positions.shape == (101, 64)
    assert torch.equal(positions[0], clip.embeddings.position_embedding.weight[0])


def test_sam_resizes_pos_embed_for_640(tiny):
    _, sam, _, _ = tiny
    assert sam.position_embedding(64, 64) is sam.pos_embed
    resized = sam.position_embedding(40, 40)
    assert resized.shape == (1, 40, 40, 64)
    # a constant table stays constant under bicubic antialias resizing (weights sum to 1)
    with torch.no_grad():
        saved = sam.pos_embed.clone()
        sam.pos_embed.fill_(0.25)
        const = sam.position_embedding(40, 40)
        sam.pos_embed.copy_(saved)
    assert const == pytest.approx(torch.full_like(const, 0.25), abs=1e-6)


def doc_vision_flops(side: int) -> tuple[int, int, int]:
    """SAM, CLIP and projector FLOPs of one view, written out as in doc §9."""
    g = side // 16
    n, n_pad, t = g * g, (14 * -(-g // 14)) ** 2, (side // 64) ** 2 + 1
    sam = (2 * n * 768 * 768
           + 8 * (2 * n_pad * 768 * 3072 + 4 * n_pad * 196 * 768 + 4 * n_pad * 768 * 14 + 2 * n * 768 * 6144)
           + 4 * (2 * n * 768 * 3072 + 4 * n * n * 768 + 4 * n * 768 * g + 2 * n * 768 * 6144)
           + 2 * n * 768 * 256 + 2 * n * 256 * 256 * 9 + 2 * (n // 4) * 256 * 512 * 9
           + 2 * (n // 16) * 512 * 1024 * 9)
    clip = 24 * (2 * t * 1024 * 12288 + 4 * t * t * 1024)
    return sam, clip, 2 * (side // 64) ** 2 * 2048 * 1280


@pytest.mark.parametrize("side,total_gf", [(1024, 1139.97), (640, 388.15)])
def test_flop_counter_on_meta_matches_doc_formulas(official, side, total_gf):
    from torch.utils.flop_counter import FlopCounterMode
    _, sam, clip, proj = official
    with torch.device("meta"), FlopCounterMode(display=False) as sam_flops:
        features = sam(torch.empty(1, 3, side, side))
    with torch.device("meta"), FlopCounterMode(display=False) as clip_flops:
        clip_out = clip(features)
    with torch.device("meta"), FlopCounterMode(display=False) as proj_flops:
        proj(fuse(clip_out, features))
    counts = [c.get_total_flops() for c in (sam_flops, clip_flops, proj_flops)]
    assert tuple(counts) == doc_vision_flops(side)
    assert sum(counts) / 1e9 == pytest.approx(total_gf, abs=0.005)   # doc §9 table
