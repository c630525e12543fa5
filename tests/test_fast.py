"""The fast decode engine against the faithful one on the CPU (tiny preset, float32): same MoE, same
logits step by step, same routing, same greedy tokens (its stage ranges: tests/test_session.py). The
CUDA-graph replay itself is covered by the GPU-marked test and by benchmarks/engine_check.py on a GPU."""
import json
from pathlib import Path

import pytest
import torch

from dsocr_perf.dsocr.cli import main
from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.decoder import MoE, route
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.fast import CAPACITY_STEP, FastDecoder, FastMoE, static_capacity
from dsocr_perf.dsocr.session import Session
from dsocr_perf.dsocr.weights import random_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "launch/assets/sample_page.png"


@pytest.fixture(scope="module")
def scaled():
    """Tiny random model with matrices x10, so logits are O(1) and differences would show."""
    model = random_model(load_preset("tiny"), "cpu", torch.float32, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return model


@pytest.fixture(scope="module")
def sessions():
    return Session.create("tiny", seed=0, device="cpu"), Session.create("tiny", seed=0, device="cpu", engine="fast")


@torch.no_grad()
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("grouped", [False, True])
def test_fast_moe_equals_faithful_moe(scaled, tokens, grouped):
    moe: MoE = scaled.model.layers[1].mlp
    fast = FastMoE(moe, grouped=grouped)
    x = torch.randn(1, tokens, 64, generator=torch.Generator().manual_seed(tokens))
    want = moe(x)
    got = fast(x)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same experts, in the same slot order, as the faithful router picks
    assert fast.expert_ids.tolist() == route(x.reshape(-1, 64), moe.gate.weight, moe.top_k)[1].tolist()
    assert fast.expert_ids.shape == (tokens, 2)


def test_grouped_experts_are_used_where_they_work():
    from dsocr_perf.dsocr.fast import grouped_mm_works
    assert grouped_mm_works(torch.device("cpu"), torch.float32) == hasattr(torch, "_grouped_mm")


def test_static_capacity_rounds_up():
    assert CAPACITY_STEP == 64
    assert [static_capacity(n) for n in (1, 64, 65, 916, 953, 973)] == [64, 64, 128, 960, 960, 1024]


@torch.inference_mode()
def test_teacher_forced_logits_and_routing_match(scaled):
    prompt = [0, 5, 900, 77, 12, 4096, 31, 8]
    steps = [17, 18000, 3, 99, 2024, 5]
    faithful_routing = []
    hooks = [layer.mlp.register_forward_pre_hook(
        lambda m, args: faithful_routing.append(route(args[0].reshape(-1, 64), m.gate.weight, m.top_k)[1]))
        for layer in scaled.model.layers if isinstance(layer.mlp, MoE)]
    try:
        cache = scaled.new_cache(len(prompt) + len(steps))
        want = [scaled.prefill(prompt, None, cache)]
        faithful_routing.clear()
        for t in steps:
            want.append(scaled.decode_step(torch.tensor([[t]]), cache))
    finally:
        for h in hooks:
            h.remove()

    static = FastDecoder(scaled).prepare(len(prompt) + len(steps))
    assert static.capacity == 64 and static.graph is None      # CPU: no CUDA graph, the same forward eagerly
    got = [scaled.prefill(prompt, None, static.cache)]
    step = static.start()
    fast_routing = []
    for t in steps:
        got.append(step(torch.tensor([[t]])).clone())
        fast_routing += static.expert_ids
    assert static.cache.length == len(prompt) + len(steps)
    for w, g in zip(want, got):
        assert w.abs().max() > 1.0
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert len(fast_routing) == len(faithful_routing) == 2 * len(steps)    # tiny: 2 MoE layers
    assert [r.tolist() for r in fast_routing] == [r.tolist() for r in faithful_routing]


@pytest.mark.parametrize("max_new_tokens", [3, 40])
def test_engines_give_identical_greedy_tokens(sessions, max_new_tokens):
    # The sample page: Gundam 2x3 tiles, 913 prompt tokens. 3 and 40 share the 960-position static cache,
    # so the second page runs over the first one's stale keys; at 40 tokens the n-gram ban steps in (step 22).
    faithful, fast = sessions
    a = faithful.run_page(SAMPLE, max_new_tokens=max_new_tokens)
    b = fast.run_page(SAMPLE, max_new_tokens=max_new_tokens)
    assert a.workload.prompt_tokens == 913 and a.generated_tokens == max_new_tokens
    assert b.token_ids == a.token_ids
    assert b.decode_kv_lengths == a.decode_kv_lengths == list(range(914, 914 + max_new_tokens))
    assert b.text == a.text and set(b.host_times_s) == set(a.host_times_s)


def test_static_state_is_kept_per_capacity(scaled):
    fast = FastDecoder(scaled)
    static = fast.prepare(916)
    static.cache.length = 5
    assert fast.prepare(953) is static and static.cache.length == 0     # the same capacity, emptied
    assert fast.prepare(973) is not static and set(fast.states) == {960, 1024}


def test_cli_engine_flag(tmp_path, capsys):
    args = ["run", str(SAMPLE), "--preset", "tiny", "--random-weights", "--mode", "tiny", "--max-new-tokens", "4",
            "--ignore-eos", "--device", "cpu"]
    assert main(args) == 0
    faithful = capsys.readouterr()
    assert main([*args, "--engine", "fast"]) == 0
    fast = capsys.readouterr()
    assert "fast engine" in fast.err and "faithful engine" in faithful.err
    assert fast.out.split("\nworkload:")[0] == faithful.out.split("\nworkload:")[0]   # the same text
    with pytest.raises(DsocrError, match="unknown engine 'turbo'; choose one of faithful, fast"):
        Session.create("tiny", device="cpu", engine="turbo")


def test_step_past_the_capacity_is_refused(scaled):
    static = FastDecoder(scaled).prepare(60)
    static.cache.length = static.capacity
    with pytest.raises(ValueError, match="holds 64 positions"):
        static.step(torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.gpu
def test_cuda_graph_engine_matches_faithful_on_gpu():
    faithful = Session.create("tiny", seed=0, device="cuda", dtype=torch.float32)
    fast = Session.create("tiny", seed=0, device="cuda", dtype=torch.float32, engine="fast")
    a = faithful.run_page(SAMPLE, max_new_tokens=40)
    b = fast.run_page(SAMPLE, max_new_tokens=40)
    assert fast.fast.states[960].graph is not None
    assert b.token_ids == a.token_ids and b.decode_kv_lengths == a.decode_kv_lengths


def test_engine_check_dry_run_on_the_cpu(tmp_path, capsys):
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    import engine_check

    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--preset", "tiny", "--mode", "tiny", "--tokens", "6", "--runs", "2",
            "--warmup-tokens", "2", "--out", str(out)]
    assert engine_check.main(args) == 0
    printed = capsys.readouterr().out
    assert "argmax agrees         6/6 steps (100.0%)" in printed
    assert "top-k expert sets     6/6 steps agree in all 2 MoE layers (100.0%); 12/12 layer-steps" in printed
    result = json.loads(out.read_text())
    a, s = result["agreement"], result["speed"]
    assert a["max_abs_logit_diff"] < 1e-4 and a["prefill_max_abs_logit_diff"] == 0.0 and a["argmax_mismatches"] == []
    assert len(s["faithful"]["runs_ms_per_token"]) == 2 and s["greedy_common_prefix"] == 6
    floor = result["rounding_floor"]        # fp32 on the CPU: another attention kernel flips nothing
    assert (floor["argmax_agree"], floor["routing_agree_layer_steps"], floor["routing_layer_steps"]) == (6, 12, 12)
    assert floor["max_abs_logit_diff"] < 1e-4
    assert s["speedup"] == pytest.approx(s["faithful"]["ms_per_token"] / s["fast"]["ms_per_token"])
    assert engine_check.main(args) == 2                     # never overwrites without --force
    assert capsys.readouterr().err == f"Error: {out} exists; pass --force to overwrite it\n"
