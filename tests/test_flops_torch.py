"""The analytic FLOP model agrees with torch's own counter run on the project's model.

Reference: torch.utils.flop_counter.FlopCounterMode over dsocr.model.DeepseekOCR (official preset)
built on the meta device, so nothing is computed and the test is fast. On meta,
scaled_dot_product_attention falls back to its math decomposition (two aten.bmm calls) and the
counter counts them; a causal prefill is therefore counted as the full L x L product, which is
AttentionPolicy.FULL, the default of dsocr.flops (checked explicitly below). (On a CPU device the
counter sees the fused SDPA kernel and counts nothing for the attention core; docs §9.)

Each stage must agree within 0.5 %; today they agree exactly.
"""
import pytest

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dsocr_perf.dsocr import flops, stages  # noqa: E402
from dsocr_perf.dsocr.config import load_preset  # noqa: E402
from dsocr_perf.dsocr.flops import AttentionPolicy  # noqa: E402
from dsocr_perf.dsocr.workload import workload_shapes  # noqa: E402

TEXT_IDS = [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]   # "\n<|grounding|>Convert the document to markdown."
TOLERANCE = 0.005

WORKLOADS = {                     # name: (width, height, mode)
    "tiny": (800, 600, "tiny"),
    "small": (800, 600, "small"),
    "base": (1654, 2339, "base"),
    "large": (1654, 2339, "large"),
    "gundam-2x3": (1654, 2339, "gundam"),
    "gundam-3x3": (1920, 1920, "gundam"),
}
DECODE_KV_LENGTHS = (284, 914, 4096)


@pytest.fixture(scope="module")
def official():
    from dsocr_perf.dsocr.model import DeepseekOCR
    with torch.device("meta"):
        model = DeepseekOCR(load_preset("official")).eval()
    return model


def count(fn, *args):
    """Run fn under FlopCounterMode; return (total FLOPs, {module name: FLOPs}, result)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module, out


def views_on_meta(workload):
    tiles = glob = None
    for v in workload.views:
        batch = torch.empty(v.count, 3, v.side, v.side, device="meta")
        tiles, glob = (batch, glob) if v.name == "tiles" else (tiles, batch)
    return tiles, glob


def assert_close(measured, analytic, what):
    assert measured > 0, f"{what}: torch counted nothing"
    assert abs(analytic - measured) <= TOLERANCE * measured, \
        f"{what}: analytic {analytic:,} vs FlopCounterMode {measured:,} ({analytic / measured - 1:+.3%})"


@pytest.mark.parametrize("name", WORKLOADS)
def test_prefill_stages_match_flop_counter(official, name):
    width, height, mode = WORKLOADS[name]
    w = workload_shapes(width, height, mode, text_tokens=len(TEXT_IDS))
    if name == "gundam-2x3":
        assert w.tile_grid == (2, 3)
    if name == "gundam-3x3":
        assert w.tile_grid == (3, 3)
    expected = flops.page_costs(official.config, w)      # default policy: FULL

    inner = official.model
    vision_total, per_module, embeds = count(official.image_embeddings, *views_on_meta(w), w.tile_grid)
    assert embeds.shape == (w.image_tokens, official.config.decoder.hidden_size)
    for stage, module in ((stages.SAM, inner.sam_model), (stages.CLIP, inner.vision_model),
                          (stages.PROJECTOR, inner.projector)):
        assert_close(per_module[type(module).__name__], expected[stage].flops, f"{name} {stage}")

    ids = [0] + [official.config.image_token_id] * w.image_tokens + TEXT_IDS
    assert len(ids) == w.prompt_tokens
    cache = official.new_cache(w.prompt_tokens + 1)
    llm_total, _, logits = count(official.prefill, ids, embeds, cache)
    assert logits.shape == (1, official.config.decoder.vocab_size)       # lm_head on the last position only
    assert_close(llm_total, expected[stages.LLM_PREFILL].flops, f"{name} llm_prefill")
    assert_close(vision_total + llm_total, expected[stages.PREFILL].flops, f"{name} prefill")


@pytest.mark.parametrize("kv_length", DECODE_KV_LENGTHS)
def test_decode_step_matches_flop_counter(official, kv_length):
    cache = official.new_cache(kv_length)
    cache.length = kv_length - 1                   # the step writes its own K,V and attends over kv_length keys
    token = torch.zeros(1, 1, dtype=torch.long, device="meta")
    measured, _, _ = count(official.decode_step, token, cache)
    analytic = flops.decode_step_cost(official.config.decoder, kv_length).flops
    assert_close(measured, analytic, f"decode step at KV {kv_length}")
    assert analytic == 1_148_190_720 + 61_440 * kv_length


def test_meta_sdpa_counts_causal_attention_as_the_full_square():
    """Why the default policy is FULL: the reference counter ignores is_causal."""
    dec = load_preset("official").decoder
    L, h, d = 913, dec.num_attention_heads, dec.head_dim
    q = torch.empty(1, h, L, d, device="meta")
    measured, _, _ = count(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert measured == flops.attention_core_flops(dec, L, L, AttentionPolicy.FULL) == 4 * L * L * h * d
    assert measured != flops.attention_core_flops(dec, L, L, AttentionPolicy.CAUSAL_HALF)


def test_tiny_preset_gundam_matches_too():
    """Other widths and depths (the CPU test preset): the formulas are not tuned to the official numbers."""
    from dsocr_perf.dsocr.model import DeepseekOCR
    cfg = load_preset("tiny")
    with torch.device("meta"):
        model = DeepseekOCR(cfg).eval()
    w = workload_shapes(1654, 2339, "gundam", text_tokens=len(TEXT_IDS))
    expected = flops.page_costs(cfg, w, [w.prompt_tokens + 1])
    vision_total, per_module, embeds = count(model.image_embeddings, *views_on_meta(w), w.tile_grid)
    for stage, module in ((stages.SAM, model.model.sam_model), (stages.CLIP, model.model.vision_model),
                          (stages.PROJECTOR, model.model.projector)):
        assert_close(per_module[type(module).__name__], expected[stage].flops, f"tiny {stage}")
    ids = [0] + [cfg.image_token_id] * w.image_tokens + TEXT_IDS
    cache = model.new_cache(w.prompt_tokens + 1)
    llm_total, _, _ = count(model.prefill, ids, embeds, cache)
    assert_close(llm_total, expected[stages.LLM_PREFILL].flops, "tiny llm_prefill")
    step, _, _ = count(model.decode_step, torch.zeros(1, 1, dtype=torch.long, device="meta"), cache)
    assert_close(step, expected[stages.DECODE].flops, "tiny decode step")


def test_fvcore_second_opinion_on_clip():
    """fvcore (jit trace; 1 multiply-add = 1 flop) counts CLIP's linears like we do; it skips SDPA and adds
    5 flops per element for each LayerNorm, so compare its `linear` count with ours minus the attention core."""
    fvcore = pytest.importorskip("fvcore.nn")
    from dsocr_perf.dsocr.vision import ClipEncoder
    cfg = load_preset("official").clip
    with torch.device("meta"):
        clip = ClipEncoder(cfg).eval()
    analysis = fvcore.FlopCountAnalysis(clip, torch.empty(1, 1024, 16, 16, device="meta"))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    linear_macs = analysis.by_operator()["linear"]
    t = 16 * 16 + 1
    attention_core = cfg.layers * 4 * t * t * cfg.width
    assert 2 * linear_macs == flops.clip_cost(cfg, 16).flops - attention_core


def test_on_cpu_the_counter_does_not_see_the_fused_attention():
    """Why these tests run on meta: on a CPU tensor SDPA dispatches to a fused kernel the counter has no
    formula for (docs §9), so a CPU count would miss the attention core entirely."""
    q = torch.randn(1, 2, 16, 8)
    measured, _, _ = count(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    on_meta, _, _ = count(lambda: torch.nn.functional.scaled_dot_product_attention(
        q.to("meta"), q.to("meta"), q.to("meta"), is_causal=True))
    assert (measured, on_meta) == (0, 4 * 16 * 16 * 2 * 8)
