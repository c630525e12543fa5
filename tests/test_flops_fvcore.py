"""A second, independent FLOP count: fvcore's FlopCountAnalysis on the project's model (tiny preset, CPU).

fvcore counts one multiply-add as one flop and has no handler for scaled_dot_product_attention (it lists
it among the unsupported operators and counts nothing for it), so the check is: the analytic model
(dsocr/flops.py, 2 FLOPs per multiply-add) less its attention core = 2 x fvcore's count, exactly. The
attention core itself is checked against torch.utils.flop_counter in tests/test_flops_torch.py."""
from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
fvcore_nn = pytest.importorskip("fvcore.nn")

from dsocr_perf.dsocr import flops  # noqa: E402
from dsocr_perf.dsocr.config import load_preset  # noqa: E402
from dsocr_perf.dsocr.weights import random_model  # noqa: E402


class Call(torch.nn.Module):
    """fvcore traces a module: this one calls `fn(*args)` on the model."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(*args)


def fvcore_flops(model, fn, *args) -> tuple[int, set[str]]:
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = fvcore_nn.FlopCountAnalysis(Call(model, fn), args)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total(), set(analysis.unsupported_ops())


@pytest.fixture(scope="module")
def tiny():
    config = load_preset("tiny")
    return config, random_model(config, device="cpu", dtype=torch.float32, seed=0)


@pytest.mark.parametrize("prompt_tokens", [9, 57])
def test_text_prefill(tiny, prompt_tokens):
    config, model = tiny
    ids = list(range(5, 5 + prompt_tokens))
    with torch.no_grad():
        counted, unsupported = fvcore_flops(model, lambda: model.prefill(ids, None, model.new_cache(prompt_tokens + 1)))
    assert "aten::scaled_dot_product_attention" in unsupported
    c = config.decoder
    analytic = flops.llm_prefill_cost(c, prompt_tokens).flops
    core = c.num_hidden_layers * flops.attention_core_flops(c, prompt_tokens, prompt_tokens)
    assert analytic - core == 2 * counted


@pytest.mark.parametrize("kv_length", [2, 40])
def test_decode_step(tiny, kv_length):
    config, model = tiny
    cache = model.new_cache(kv_length + 1)
    with torch.no_grad():
        model.prefill(list(range(5, 5 + kv_length - 1)), None, cache)
        counted, _ = fvcore_flops(model, lambda token: model.decode_step(token, cache), torch.tensor([[7]]))
    c = config.decoder
    analytic = flops.decode_step_cost(c, kv_length).flops
    core = c.num_hidden_layers * flops.attention_core_flops(c, 1, kv_length)
    assert analytic - core == 2 * counted
