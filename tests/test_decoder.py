"""The MoE decoder: KV cache vs recompute, RoPE pairing, router semantics, meta-device FLOPs."""
import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.decoder import MoE, RMSNorm, apply_rope, rope_tables, tokens_per_expert
from dsocr_perf.dsocr.weights import meta_model, random_model


@pytest.fixture(scope="module")
def tiny():
    return random_model(load_preset("tiny"), "cpu", torch.float32, seed=3)


@torch.no_grad()
def test_kv_cache_decode_equals_full_recompute(tiny):
    # Scale the weights up so the logits are O(1) and differences would show.
    model = copy.deepcopy(tiny)
    for _name, p in model.named_parameters():
        if p.ndim == 2:
            p.mul_(10)
    prompt = [0, 5, 900, 77, 12, 4096, 31, 8]
    steps = [17, 18000, 3, 99, 2024]
    cache = model.new_cache(len(prompt) + len(steps))
    cached = [model.prefill(prompt, None, cache)]
    for t in steps:
        cached.append(model.decode_step(torch.tensor([[t]]), cache))
    assert cache.length == len(prompt) + len(steps)
    for i, logits in enumerate(cached):
        full = model.prefill(prompt + steps[:i], None, None)       # no cache: one causal pass
        assert logits.abs().max() > 1.0
        # fp32: the two paths differ only in summation order
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)


def test_rope_rotates_dim_i_with_dim_i_plus_half():
    head_dim, theta = 8, 10000.0
    x = torch.zeros(1, 1, 3, head_dim)
    x[..., 1] = 1.0                                   # unit vector on dim 1 -> pairs with dim 1 + 4 = 5
    cos, sin = rope_tables(head_dim, theta, torch.arange(3), torch.float32)
    y = apply_rope(x, cos, sin)
    for pos in range(3):
        angle = pos * theta ** (-2 * 1 / head_dim)   # frequency index 1: theta^(-2/8) = 0.1
        assert y[0, 0, pos, 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
        assert y[0, 0, pos, 5].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert y[0, 0, pos].abs().sum().item() == pytest.approx(abs(math.cos(angle)) + abs(math.sin(angle)), abs=1e-6)


def test_rmsnorm_computes_in_fp32_and_casts_back():
    norm = RMSNorm(4, eps=1e-6).to(torch.bfloat16)
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]], dtype=torch.bfloat16)   # rms = sqrt(25/4) = 2.5
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert y.float().tolist() == [[1.203125, 1.6015625, 0.0, 0.0]]     # 1.2, 1.6 rounded to bf16


@torch.no_grad()
def test_moe_equals_per_token_reference(tiny):
    moe: MoE = tiny.model.layers[1].mlp
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    got = moe(x)
    flat = x.reshape(-1, 64)
    probs = (flat @ moe.gate.weight.T).softmax(-1)
    want = []
    for n in range(flat.shape[0]):
        w, idx = probs[n].topk(moe.top_k)                 # raw probabilities: no renormalisation
        assert w.sum() < 1.0
        routed = sum(w[j] * moe.experts[int(idx[j])](flat[n]) for j in range(moe.top_k))
        want.append(routed + moe.shared_experts(flat[n]))
    torch.testing.assert_close(got.reshape(-1, 64), torch.stack(want), atol=1e-6, rtol=1e-5)


def test_tokens_per_expert_on_meta_spreads_evenly():
    ids = torch.empty(6, dtype=torch.long, device="meta")           # one decode token, top-6
    assert tokens_per_expert(ids, 64) == [1] * 6 + [0] * 58
    ids = torch.empty(913 * 6, dtype=torch.long, device="meta")     # the 2x3 Gundam prompt
    counts = tokens_per_expert(ids, 64)
    assert sum(counts) == 5478 and max(counts) - min(counts) == 1
    assert tokens_per_expert(torch.tensor([3, 3, 0, 5]), 6) == [1, 0, 0, 2, 0, 1]


def test_meta_decode_step_flops_match_the_doc():
    # docs §9: decode token at context c = 817,233,920 (body) + 330,956,800 (lm_head) + 61,440 * c
    model = meta_model(load_preset("official"))
    cache = model.new_cache(1024)
    cache.length = 912
    with FlopCounterMode(display=False) as counter:
        model.decode_step(torch.zeros(1, 1, dtype=torch.long, device="meta"), cache)
    assert counter.get_total_flops() == 817_233_920 + 330_956_800 + 61_440 * 913


def _scripted(tokens, vocab=8):
    """Logits whose argmax walks through `tokens` (the decode loop's real input type, no model needed)."""
    it = iter(tokens[1:] + [0] * 10)

    def step(token):
        logits = torch.zeros(1, vocab)
        logits[0, next(it)] = 1.0
        return logits

    first = torch.zeros(1, vocab)
    first[0, tokens[0]] = 1.0
    return first, step


def test_greedy_decode_stops_at_eos_unless_ignored():
    from dsocr_perf.dsocr.generate import greedy_decode

    first, step = _scripted([5, 6, 1, 7])
    g = greedy_decode(step, first, prompt_ids=[0, 3, 3], max_new_tokens=10, eos_id=1, no_repeat_ngram_size=0)
    assert (g.token_ids, g.kv_lengths, g.stopped_at_eos) == ([5, 6, 1], [4, 5, 6], True)
    first, step = _scripted([5, 6, 1, 7])
    g = greedy_decode(step, first, prompt_ids=[0, 3, 3], max_new_tokens=4, eos_id=1, ignore_eos=True,
                      no_repeat_ngram_size=0)
    assert (g.token_ids, g.kv_lengths, g.stopped_at_eos) == ([5, 6, 1, 7], [4, 5, 6, 7], False)


def test_greedy_decode_bans_repeated_ngrams():
    from dsocr_perf.dsocr.generate import greedy_decode

    # the model wants "4 4 4 ..." forever; with n = 2 the bigram (4, 4) may appear once, then 4 after 4 is
    # banned and the runner-up (all logits 0 -> the lowest id, 0) is taken; after that 0, the prompt's
    # bigram (0, 4) bans 4 again (HF counts the prompt too), so 0 follows.
    def step(token):
        logits = torch.zeros(1, 8)
        logits[0, 4] = 1.0
        return logits

    g = greedy_decode(step, step(None), prompt_ids=[0], max_new_tokens=4, eos_id=1, no_repeat_ngram_size=2)
    assert g.token_ids == [4, 4, 0, 0]
