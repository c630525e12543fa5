"""The analytic FLOP/byte model reproduces the worked numbers of docs/deepseek-ocr-v1.md §1-2, §9."""
import pytest

from dsocr_perf.dsocr import flops, stages
from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.flops import AttentionPolicy
from dsocr_perf.dsocr.workload import View, workload_shapes

OFFICIAL = load_preset("official")
DEC = OFFICIAL.decoder
GF = 1e9


def view_gflops(side):
    [vc] = flops.view_costs(OFFICIAL, _single_view_workload(side))
    return vc.sam.flops / GF, vc.clip.flops / GF, vc.projector.flops / GF, vc.total.flops / GF


def _single_view_workload(side):
    mode = {512: "tiny", 640: "small", 1024: "base", 1280: "large"}[side]
    return workload_shapes(side, side, mode)


@pytest.mark.parametrize("side, sam, clip, proj, total", [
    (512, 228.30, 39.67, 0.34, 268.31),
    (640, 325.62, 62.00, 0.52, 388.15),
    (1024, 976.91, 161.72, 1.34, 1139.97),
    (1280, 1683.12, 258.00, 2.10, 1943.22),
])
def test_vision_per_view_matches_doc_table(side, sam, clip, proj, total):
    got = view_gflops(side)
    assert got == pytest.approx((sam, clip, proj, total), abs=0.005)


def test_vision_exact_integers():
    # 1024^2: 1,139,967,033,344 FLOPs; one 640^2 tile: 388,149,837,824 (FlopCounterMode-exact per the doc)
    assert view_gflops(1024)[3] * GF == 1_139_967_033_344
    assert flops.sam_cost(OFFICIAL.sam, 640).flops + flops.clip_cost(OFFICIAL.clip, 10).flops \
        + flops.projector_cost(OFFICIAL.projector, 10).flops == 388_149_837_824


@pytest.mark.parametrize("tiles, tf", [(2, 1.92), (6, 3.47), (9, 4.63)])
def test_gundam_vision_is_global_plus_tiles(tiles, tf):
    w = workload_shapes(1654, 2339, "gundam")  # only the view list matters here
    w = type(w)(w.mode, w.image_width, w.image_height, w.tile_grid,
                (View("tiles", tiles, 640), View("global", 1, 1024)), w.image_tokens, 0)
    total = sum(vc.total.flops for vc in flops.view_costs(OFFICIAL, w))
    assert total / 1e12 == pytest.approx(tf, abs=0.005)


def test_decode_token_is_1_1482_gf_plus_61440_per_key():
    base = 817_233_920 + 330_956_800
    assert base == 1_148_190_720
    for c in (1, 914, 4000):
        for policy in AttentionPolicy:
            assert flops.decode_step_cost(DEC, c, policy=policy).flops == base + 61_440 * c


@pytest.mark.parametrize("width, height, mode, L, causal_half_gf, hf_all_logits_gf", [
    (1654, 2339, "gundam", 913, 772, 1074),    # A4 portrait: 2x3 tiles
    (1920, 1920, "gundam", 1213, 1037, 1438),  # square, larger than 0.5 * 9 tiles: 3x3
    (600, 500, "gundam", 283, 234, 327),       # <= 640 on both sides: global view only
    (800, 600, "tiny", 83, 68, None),
    (800, 600, "small", 121, 100, None),
    (800, 600, "large", 431, 358, None),
])
def test_prefill_matches_worked_examples(width, height, mode, L, causal_half_gf, hf_all_logits_gf):
    w = workload_shapes(width, height, mode, text_tokens=9)
    assert w.prompt_tokens == L
    half = flops.llm_prefill_cost(DEC, L, policy=AttentionPolicy.CAUSAL_HALF).flops
    assert round(half / GF) == causal_half_gf
    if hf_all_logits_gf:
        hf = flops.llm_prefill_cost(DEC, L, logits_positions=L, policy="causal-half").flops
        assert round(hf / GF) == hf_all_logits_gf


def test_attention_policy_full_counts_the_whole_square():
    L = 913
    full = flops.llm_prefill_cost(DEC, L).flops            # default policy: FULL
    half = flops.llm_prefill_cost(DEC, L, policy="causal-half").flops
    assert flops.DEFAULT_ATTENTION_POLICY is AttentionPolicy.FULL
    assert half - (L * 817_233_920 + 330_956_800) == 30_720 * L * (L + 1)   # doc: attn 25.6 GF
    assert full - half == 12 * 4 * 1280 * (L * L - L * (L + 1) // 2)


def test_parameter_counts_match_the_checkpoint():
    # docs §2: 3,336,106,240 parameters; SAM 95,569,152; CLIP 303,177,728; projector 2,622,720
    assert flops.model_params(OFFICIAL) == 3_336_106_240
    assert flops.sam_params(OFFICIAL.sam) == 95_569_152
    assert flops.clip_params(OFFICIAL.clip, include_patch_conv=True) == 303_177_728
    assert flops.projector_params(OFFICIAL.projector) == 2_622_720


def test_decode_weight_bytes_are_the_active_parameters():
    # batch 1: attention + dense + 11 x (router + shared + 6 experts) + lm_head + norms + 1 embedding row
    # = 574.1M active matmul params (doc §2 "A570M") -> ~1.148 GB in bf16
    step = flops.decode_step_cost(DEC, 914)
    active = 78_643_200 + 26_296_320 + 11 * (81_920 + 6_881_280 + 6 * 3_440_640) + 165_478_400
    norms_and_row = 12 * 2 * 1280 + 1280 + 1280
    assert step.weight_bytes == 2 * (active + norms_and_row)
    assert step.kv_read_bytes == 914 * 5_120 * 12 and step.kv_write_bytes == 5_120 * 12


def test_prefill_touches_all_experts_decode_only_the_active_ones():
    assert flops.experts_touched(1, 64, 6) == pytest.approx(6)
    assert flops.experts_touched(913, 64, 6) == pytest.approx(64, abs=1e-6)
    prefill = flops.llm_prefill_cost(DEC, 913)
    # all 64 experts of 11 MoE layers are read, plus attention/dense/shared/routers/lm_head
    assert prefill.weight_bytes / 2 == pytest.approx(3_336_106_240 - 95_569_152 - 303_177_728
                                                     - 2_622_720 - 2 * 1280 - 165_478_400 + 913 * 1280,
                                                     rel=1e-9)


def test_page_costs_nest_vision_inside_prefill():
    w = workload_shapes(1654, 2339, "gundam", 9)
    kv = [w.prompt_tokens + 1 + i for i in range(1000)]
    pc = flops.page_costs(OFFICIAL, w, kv, policy="causal-half")
    assert pc[stages.PREFILL].flops == sum(pc[s].flops for s in (stages.SAM, stages.CLIP, stages.PROJECTOR,
                                                                   stages.LLM_PREFILL))
    assert (pc[stages.SAM].flops + pc[stages.CLIP].flops + pc[stages.PROJECTOR].flops) / 1e12 \
        == pytest.approx(3.469, abs=0.0005)
    assert pc[stages.DECODE].flops / 1e12 == pytest.approx(1.235, abs=0.0005)   # doc: +1000 decoded
    assert pc[stages.REQUEST].flops == pc[stages.PREFILL].flops + pc[stages.DECODE].flops


def test_decode_model_rows_sum_to_the_step_and_grow_with_context():
    kv = [914, 915, 2000]
    rows = flops.decode_layer_rows(OFFICIAL, kv)
    assert len(rows) == 3 * 13 and set(rows[0]) == set(flops.DECODE_MODEL_COLUMNS)
    for step, c in enumerate(kv):
        mine = [r for r in rows if r["step"] == step]
        assert sum(r["flops"] for r in mine) == flops.decode_step_cost(DEC, c).flops
        assert sum(r["bytes"] for r in mine) == flops.decode_step_cost(DEC, c).bytes
    layer3 = [r for r in rows if r["layer"] == 3]
    assert layer3[2]["kv_read_bytes"] - layer3[0]["kv_read_bytes"] == (2000 - 914) * 5_120
    assert layer3[2]["attention_flops"] == 4 * 2000 * 1280


def test_kv_cache_bytes_per_token_per_layer():
    assert flops.kv_bytes_per_token_layer(DEC, 2) == 5_120


def test_dtype_bytes_reads_manifest_spellings():
    assert flops.dtype_bytes("torch.bfloat16") == 2 and flops.dtype_bytes("float32") == 4
    with pytest.raises(ValueError, match="unknown dtype"):
        flops.dtype_bytes("int3")


@pytest.mark.parametrize("L, n, tf", [
    (283, 1000, 1.196), (283, 3000, 3.77),
    (913, 1000, 1.235), (913, 3000, 3.89),
    (1213, 1000, 1.253),
    (1213, 3000, 3.94),   # the doc prints 3.95; 3000 x 1.1482 GF + 61,440 x (3000 x 1213 + 3000 x 3001 / 2) = 3.9447
])
def test_decode_totals_match_worked_examples(L, n, tf):
    # doc §9 worked examples: "+1000 decoded" / "+3000 decoded", step i at KV length L + i + 1
    total = sum(flops.decode_step_cost(DEC, L + 1 + i).flops for i in range(n))
    assert round(total / 1e12, 3 if n == 1000 else 2) == tf


def test_attention_split_of_each_stage():
    """attention_flops: the QK^T + AV part of each stage, by hand for a 1024 view (SAM ViT-B: 12 blocks, 4 of them
    global over 64^2 tokens, 8 windowed over 5x5 windows of 14^2; CLIP-L 24 layers over 16^2 + 1 tokens)."""
    w = workload_shapes(1024, 1024, "base")
    kv = [257 + 16, 257 + 17]
    got = flops.attention_flops(OFFICIAL, w, kv)
    n = 64 * 64
    assert got[stages.SAM] == 4 * (4 * n * n * 768) + 8 * (4 * (70 * 70) * 196 * 768)
    assert got[stages.CLIP] == 24 * 4 * 257 * 257 * 1024
    assert got[stages.PROJECTOR] == 0
    p = w.prompt_tokens
    assert got[stages.LLM_PREFILL] == 12 * 4 * p * p * 1280
    rows = flops.decode_layer_rows(OFFICIAL, kv)
    assert got[stages.DECODE] == sum(r["attention_flops"] for r in rows) == 12 * 4 * 1280 * sum(kv)
    assert got[stages.PREFILL] == got[stages.SAM] + got[stages.CLIP] + got[stages.LLM_PREFILL]
    # never more than the stage's total
    costs = flops.page_costs(OFFICIAL, w, kv)
    assert all(0 <= got[s] <= costs[s].flops for s in costs)
