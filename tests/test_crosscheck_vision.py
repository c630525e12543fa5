"""Independent cross-check of the vision side against transformers' `unlimited_ocr` family (doc §8).

Unlimited-OCR is architecturally DeepSeek-OCR v1 and its loader consumes the same raw checkpoint key names.
So we write OUR tiny modules' weights to a safetensors file under the official names (`model.sam_model.*`,
`model.vision_model.*`, `model.projector.*`), load that folder with transformers' own `from_pretrained`
(its conversion table renames blocks -> layers, neck.0 -> neck.conv1, splits qkv_proj, ...), and compare
SAM, CLIP, fused features and projector outputs on the same pixels.

Known differences, none in the compared path:
- Unlimited-OCR deletes CLIP's unused `patch_embedding` (it is on its ignore-on-load list), so that key is
  loaded by us and dropped by it; neither forward applies it.
- its decoder (sliding window, fused experts) is not involved here; decoder keys load as "missing".
Tolerance: fp32, atol = rtol = 1e-5 (observed: bit-identical, max |diff| = 0.0, on torch 2.13 CPU).
"""
import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.23")
from safetensors.torch import save_file  # noqa: E402

from dsocr_perf.dsocr.config import load_preset  # noqa: E402
from dsocr_perf.dsocr.vision import ClipEncoder, Projector, SamEncoder, fuse  # noqa: E402

PREFIXES = ("model.sam_model.", "model.vision_model.", "model.projector.")
TOL = dict(atol=1e-5, rtol=1e-5)


def unlimited_ocr_config(cfg):
    """A transformers UnlimitedOcrConfig with the tiny preset's vision sizes and a throwaway decoder."""
    sam, clip = cfg.sam, cfg.clip
    return transformers.UnlimitedOcrConfig(
        vision_config=dict(
            sam_config=dict(hidden_size=sam.width, output_channels=sam.out_chans, num_hidden_layers=sam.depth,
                            num_attention_heads=sam.heads, image_size=sam.img_size, patch_size=sam.patch_size,
                            mlp_dim=sam.mlp_dim, window_size=sam.window_size,
                            global_attn_indexes=list(sam.global_attn_indexes),
                            downsample_channels=list(sam.downsample_channels)),
            encoder_config=dict(hidden_size=clip.width, intermediate_size=clip.mlp_dim,
                                num_hidden_layers=clip.layers, num_attention_heads=clip.heads,
                                image_size=clip.image_size, patch_size=clip.patch_size)),
        text_config=dict(vocab_size=256, hidden_size=cfg.projector.n_embed, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, n_routed_experts=2,
                         num_experts_per_tok=1, moe_intermediate_size=16, n_shared_experts=1))


def build_pair(folder, cfg):
    """Our tiny modules with perturbed seeded weights, and transformers' model loaded from their checkpoint."""
    torch.manual_seed(0)
    ours = SamEncoder(cfg.sam).eval(), ClipEncoder(cfg.clip).eval(), Projector(cfg.projector).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():   # move every tensor off its default init (LayerNorm 1/0, ...) so all of them matter
        for module in ours:
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    checkpoint = {}
    for prefix, module in zip(PREFIXES, ours):
        checkpoint.update({prefix + k: v.contiguous() for k, v in module.state_dict().items()})

    unlimited_ocr_config(cfg).save_pretrained(folder)
    save_file(checkpoint, str(folder / "model.safetensors"), metadata={"format": "pt"})
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()   # it would print a table of the (expected) missing decoder keys
    try:
        reference, info = transformers.UnlimitedOcrForConditionalGeneration.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return ours, reference.eval(), info


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("unlimited_ocr_tiny"), load_preset("tiny"))


@pytest.fixture(scope="module")
def pair_256(tmp_path_factory):
    """The tiny preset with SAM pretrained at 256 px (16x16 grid): runs SAM at its native grid in a blink."""
    cfg = load_preset("tiny")
    cfg = dataclasses.replace(cfg, sam=dataclasses.replace(cfg.sam, img_size=256))
    return build_pair(tmp_path_factory.mktemp("unlimited_ocr_tiny_256"), cfg)


def test_transformers_loads_our_key_names(pair):
    _, _, info = pair
    assert info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    # only the decoder and the two learned separators (not vision modules) are left for it to initialise
    assert {k for k in info["missing_keys"]
            if "language_model" not in k and k != "lm_head.weight"} == {"model.image_newline",
                                                                       "model.view_separator"}


def run_both(pair, side):
    (sam, clip, proj), reference, _ = pair
    tower = reference.model.vision_tower
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = sam(pixels)
        clip_out = clip(features)
        fused = fuse(clip_out, features)
        projected = proj(fused)
        ref_features = tower.sam_encoder(pixels).last_hidden_state
        ref_clip = tower.vision_encoder(ref_features).last_hidden_state
        ref_fused = tower(pixels).last_hidden_state
        ref_projected = reference.model.multi_modal_projector(ref_fused)
    return (features, clip_out, fused, projected), (ref_features, ref_clip, ref_fused, ref_projected)


def test_sam_clip_fuse_projector_match_at_640(pair):
    # 640 px exercises every resize path at once: SAM pos_embed 64 -> 40, global rel-pos tables 127 -> 79 rows,
    # window padding 40 -> 42, CLIP positions 16x16 -> 10x10. Batch 2 checks the window batching.
    (features, clip_out, fused, projected), refs = run_both(pair, 640)
    assert features.shape == (2, 64, 10, 10) and projected.shape == (2, 100, 64)
    for ours, theirs in zip((features, clip_out, fused, projected), refs):
        torch.testing.assert_close(ours, theirs, **TOL)


def test_sam_clip_fuse_projector_match_at_native_grid(pair_256):
    # SAM at its pretraining grid (no pos_embed or rel-pos resize; 16 = 14 + 2 padded windows),
    # CLIP at 4x4 (positions resized 16x16 -> 4x4)
    (features, clip_out, fused, projected), refs = run_both(pair_256, 256)
    assert features.shape == (2, 64, 4, 4) and clip_out.shape == (2, 17, 64)
    for ours, theirs in zip((features, clip_out, fused, projected), refs):
        torch.testing.assert_close(ours, theirs, **TOL)


def test_clip_at_the_native_16x16_grid_matches(pair):
    # The 1024-px view's CLIP: positions used as stored (no resize). A 1024-px SAM pass costs seconds on CPU,
    # so CLIP is fed a random 16x16 map directly; SAM's native grid is covered by the 256-px variant above.
    (_, clip, _), reference, _ = pair
    features = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = clip(features)
        theirs = reference.model.vision_tower.vision_encoder(features).last_hidden_state
    assert ours.shape == (2, 257, 64)
    torch.testing.assert_close(ours, theirs, **TOL)
