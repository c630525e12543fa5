"""The assembled model: official state dict, image-embedding layout, tiny image -> text end to end."""
import json

import pytest
import torch

from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.weights import meta_model, random_model, shape_table


def test_official_state_dict_equals_the_checkpoint_table(shared):
    ref = json.loads((shared / "data/deepseek-ocr/weight_shapes.json").read_text())
    table = shape_table(meta_model(load_preset("official")))
    assert len(table) == 2710
    assert sum(torch.Size(s).numel() for s in table.values()) == 3_336_106_240
    assert table == ref["shapes"]
    assert "model.vision_model.embeddings.position_ids" not in table


@pytest.fixture(scope="module")
def tiny():
    return random_model(load_preset("tiny"), "cpu", torch.float32, seed=1)


@torch.no_grad()
def test_image_embedding_layout(tiny):
    """[local tiles stitched row-major, newline per row][global, newline per row][separator] (docs §3.2).

    Small views keep it fast: 128-px tiles give 2x2 tokens each, the 256-px global view 4x4.
    """
    gen = torch.Generator().manual_seed(0)
    tiles = torch.randn(6, 3, 128, 128, generator=gen)            # tile grid 3 across x 2 down
    global_view = torch.randn(1, 3, 256, 256, generator=gen)
    emb = tiny.image_embeddings(tiles, global_view, (3, 2))
    local_rows, local_cols = 2 * 2, 3 * 2
    assert emb.shape == (local_rows * (local_cols + 1) + 4 * 5 + 1, 64)   # 28 + 20 + 1

    per_tile = tiny.encode_views(tiles)                            # (6, 4, 64): each tile's 2x2 grid
    glob = tiny.encode_views(global_view)[0]                       # (16, 64)
    newline, separator = tiny.model.image_newline, tiny.model.view_seperator
    for row in range(local_rows):
        for col in range(local_cols):
            tile = (row // 2) * 3 + col // 2                       # tile i at column i % 3, row i // 3
            cell = (row % 2) * 2 + col % 2
            torch.testing.assert_close(emb[row * 7 + col], per_tile[tile, cell])
        assert torch.equal(emb[row * 7 + 6], newline)
    for row in range(4):
        for col in range(4):
            torch.testing.assert_close(emb[28 + row * 5 + col], glob[row * 4 + col])
        assert torch.equal(emb[28 + row * 5 + 4], newline)
    assert torch.equal(emb[-1], separator)


@torch.no_grad()
def test_untiled_page_has_no_local_block(tiny):
    emb = tiny.image_embeddings(None, torch.zeros(1, 3, 512, 512), (1, 1))
    assert emb.shape == (8 * 9 + 1, 64)                            # docs §4.1: Tiny mode, 73 slots


@torch.no_grad()
def test_prefill_writes_image_embeddings_into_the_placeholder_positions(tiny):
    from dsocr_perf.dsocr.errors import DsocrError

    ids = [0, 128815, 128815, 201, 16]
    image = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    with_image = tiny.prefill(ids, image, None)
    with_other = tiny.prefill(ids, image.flip(0), None)
    assert not torch.allclose(with_image, with_other)
    with pytest.raises(DsocrError, match="2 image placeholders but the image gives 3"):
        tiny.prefill(ids, torch.zeros(3, 64), None)
