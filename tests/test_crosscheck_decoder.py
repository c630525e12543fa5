"""Independent cross-check: transformers' `unlimited_ocr` text model (DeepSeek-OCR v1's decoder plus a
reference sliding window) with our weights gives the same hidden states and logits.

The window is set larger than every sequence here, so it never drops a key. Their experts are stored
fused: gate_up_proj (E, 2I, H) = [gate; up] per expert, down_proj (E, H, I).
"""
import pytest
import torch

from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.weights import random_model

transformers = pytest.importorskip("transformers")
uocr = pytest.importorskip("transformers.models.unlimited_ocr.modeling_unlimited_ocr")


def reference_from(ours):
    from transformers.models.unlimited_ocr.configuration_unlimited_ocr import UnlimitedOcrTextConfig

    d = ours.config.decoder
    cfg = UnlimitedOcrTextConfig(
        vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
        num_hidden_layers=d.num_hidden_layers, num_attention_heads=d.num_attention_heads,
        num_key_value_heads=d.num_key_value_heads, moe_intermediate_size=d.moe_intermediate_size,
        n_routed_experts=d.n_routed_experts, num_experts_per_tok=d.num_experts_per_tok,
        n_shared_experts=d.n_shared_experts, rms_norm_eps=d.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": d.rope_theta},
        max_position_embeddings=d.max_position_embeddings, sliding_window=4096,
        first_k_dense_replace=d.first_k_dense_replace)
    cfg._attn_implementation = "eager"
    ref = uocr.UnlimitedOcrTextModel(cfg).eval()
    src = ours.state_dict()
    state = {}
    for key, value in ref.state_dict().items():
        if key.endswith("mlp.experts.gate_up_proj"):
            layer = key.split(".")[1]
            state[key] = torch.stack([torch.cat([src[f"model.layers.{layer}.mlp.experts.{e}.gate_proj.weight"],
                                                 src[f"model.layers.{layer}.mlp.experts.{e}.up_proj.weight"]])
                                      for e in range(d.n_routed_experts)])
        elif key.endswith("mlp.experts.down_proj"):
            layer = key.split(".")[1]
            state[key] = torch.stack([src[f"model.layers.{layer}.mlp.experts.{e}.down_proj.weight"]
                                      for e in range(d.n_routed_experts)])
        else:
            state[key] = src[f"model.{key}"]
        assert state[key].shape == value.shape, key
    ref.load_state_dict(state, strict=True)
    return ref


@torch.no_grad()
def test_decoder_matches_transformers_unlimited_ocr():
    ours = random_model(load_preset("tiny"), "cpu", torch.float32, seed=11)
    for p in ours.parameters():
        if p.ndim == 2:
            p.mul_(10)          # O(1) activations, so a wrong rotation or routing would show
    ref = reference_from(ours)
    assert [type(layer.mlp).__name__ for layer in ref.layers] == ["UnlimitedOcrTextMLP"] + ["UnlimitedOcrTextMoe"] * 2

    prompt = [0, 128816, 1000, 128817, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]
    steps = [42, 9000, 128821]
    ids = torch.tensor([prompt + steps])
    # Prefill over the whole sequence: every position's hidden state.
    want = ref(input_ids=ids, use_cache=False).last_hidden_state
    got = ours.model(ours.model.embed_tokens(ids))
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)   # fp32, different summation order

    # Their KV cache vs ours: prompt, then one token at a time; logits through the shared lm_head.
    out = ref(input_ids=torch.tensor([prompt]), use_cache=True)
    past = out.past_key_values
    cache = ours.new_cache(len(prompt) + len(steps))
    torch.testing.assert_close(ours.prefill(prompt, None, cache),
                               ours.lm_head(out.last_hidden_state[:, -1]), atol=2e-5, rtol=1e-5)
    for t in steps:
        out = ref(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        torch.testing.assert_close(ours.decode_step(torch.tensor([[t]]), cache),
                                   ours.lm_head(out.last_hidden_state[:, -1]), atol=2e-5, rtol=1e-5)


def test_no_repeat_ngram_matches_transformers_processor():
    """Our incremental ban list equals transformers' NoRepeatNGramLogitsProcessor at every step."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    from dsocr_perf.dsocr.generate import NoRepeatNGram

    gen = torch.Generator().manual_seed(0)
    vocab = 6
    sequence = torch.randint(0, vocab, (200,), generator=gen).tolist()   # small vocab: short n-grams repeat
    sequence = sequence[:120] + sequence[30:90] + sequence[120:]         # a 60-token repeat for n = 20
    for n in (2, 3, 20):
        ours = NoRepeatNGram(n, sequence[:10])
        theirs = NoRepeatNGramLogitsProcessor(n)
        bans = 0
        for t in range(10, len(sequence)):
            scores = theirs(torch.tensor([sequence[:t]]), torch.zeros(1, vocab))
            want = {i for i in range(vocab) if scores[0, i] == float("-inf")}
            assert ours.banned() == want, (n, t)
            bans += len(want)
            ours.append(sequence[t])
        assert bans > 0
