"""Why decode's tensor cores execute ~11x its useful FLOPs: a padding model, checked against Nsight Compute.

At batch 1 a decode step multiplies one row by each weight matrix, and the kernels that run it execute whole
tiles (measured on the H100, main 26f6ede, kernel replay of decode step 0):
  * linear layers: cuBLAS's small-M GEMMs (`nvjet_sm90_tst_64x8_...`) execute 8 rows for the one token, so a
    linear layer's tensor work is 8x its analytic FLOPs (`GEMM_ROWS`);
  * attention of the one query: FlashAttention's split-KV decode kernel (`Flash_fwd_kernel_traits<128, 64, 128,
    ...>`: head dim 128, 64-row query blocks, 128-key blocks) executes 64 query rows against the keys rounded up
    to whole 128-key blocks: 4 x 64 x ceil128(kv) x heads x head_dim per layer instead of 4 x 1 x kv x ...

Predicted executed tensor FLOPs of a step = GEMM_ROWS x (its analytic FLOPs outside attention)
+ layers x 4 x 64 x ceil128(kv) x heads x head_dim. Not modelled: tile padding along N (the routed experts'
gate/up GEMMs, 896 columns, execute 1,024: +2.6% on step 0), which is why the prediction sits a little under the
measurement. The analytic split (linear vs attention) is dsocr.flops's.
"""
from __future__ import annotations

from dataclasses import dataclass

from dsocr_perf.dsocr import flops as model
from dsocr_perf.dsocr.config import DecoderConfig

GEMM_ROWS = 8                  # rows a one-token GEMM executes (tensor-core tile rows)
ATTENTION_QUERY_ROWS = 64      # query rows a one-query attention executes (kBlockM)
ATTENTION_KEY_BLOCK = 128      # keys are processed in whole blocks of this many (kBlockN)
DESCRIPTION = (f"linear layers padded to {GEMM_ROWS} rows, the one-query attention to {ATTENTION_QUERY_ROWS} query "
               f"rows x whole {ATTENTION_KEY_BLOCK}-key blocks")


def padded(n: int, block: int) -> int:
    return -(-n // block) * block


@dataclass(frozen=True)
class StepWork:
    kv_length: int
    analytic_flops: int        # useful work (dsocr.flops)
    attention_flops: int       # its attention core
    predicted_flops: int       # what the tensor cores execute, by this model

    @property
    def linear_flops(self) -> int:
        return self.analytic_flops - self.attention_flops


def decode_step(c: DecoderConfig, kv_length: int, policy=None) -> StepWork:
    analytic = model.decode_step_cost(c, kv_length, policy=policy).flops
    attention = c.num_hidden_layers * model.attention_core_flops(c, 1, kv_length, policy)
    width = c.num_attention_heads * c.head_dim
    executed_attention = c.num_hidden_layers * 4 * ATTENTION_QUERY_ROWS * padded(kv_length, ATTENTION_KEY_BLOCK) * width
    return StepWork(kv_length, analytic, attention, GEMM_ROWS * (analytic - attention) + executed_attention)


def check(steps: list[StepWork], measured_tensor_flops: int | None) -> dict:
    """The model's decode ratio (executed / useful) against the measured one, over the same steps."""
    analytic = sum(s.analytic_flops for s in steps)
    predicted = sum(s.predicted_flops for s in steps)
    measured = measured_tensor_flops
    out = {"model": DESCRIPTION, "gemm_rows": GEMM_ROWS, "attention_query_rows": ATTENTION_QUERY_ROWS,
           "attention_key_block": ATTENTION_KEY_BLOCK, "steps": len(steps), "analytic_flops": analytic,
           "linear_flops": sum(s.linear_flops for s in steps), "attention_flops": sum(s.attention_flops for s in steps),
           "predicted_flops": predicted, "measured_flops": measured,
           "predicted_ratio": predicted / analytic if analytic else None,
           "measured_ratio": measured / analytic if analytic and measured is not None else None,
           "error_pct": 100.0 * (predicted / measured - 1) if measured else None,
           "padding_flops": measured - analytic if measured is not None else None,
           "padding_frac": 1 - analytic / measured if measured else None}
    return out


def finding(result: dict) -> str | None:
    """One sentence: how much of decode's tensor work is padding, and how well the model explains it."""
    if result["measured_ratio"] is None:
        return None
    return (f"padding: decode's tensor cores executed {result['measured_ratio']:.2f}x its useful FLOPs "
            f"({result['measured_flops'] / 1e9:,.1f} GFLOP for {result['analytic_flops'] / 1e9:,.1f}); "
            f"{100 * result['padding_frac']:.0f}% of it is padding. The padding model ({result['model']}) predicts "
            f"{result['predicted_ratio']:.2f}x ({result['error_pct']:+.1f}%). Batch-1 decode leaves "
            f"{GEMM_ROWS - 1} of {GEMM_ROWS} GEMM rows empty: up to {GEMM_ROWS} sequences decode for the same tensor "
            "work (it stays memory- and host-bound either way)")
