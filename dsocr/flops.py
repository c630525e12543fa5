"""Analytic FLOPs and bytes of one DeepSeek-OCR page, per stage, from the recorded workload.

Torch-free: the analysis side imports this module. Every shape comes from a `ModelConfig`
(dsocr.config) and a `Workload` (dsocr.workload, as recorded in the trace's manifest) plus the
KV length of each decode step; nothing is assumed. The formulas below are checked against
torch.utils.flop_counter and fvcore on the project's own model (tests/test_flops_torch.py, test_flops_fvcore.py).

FLOPs (one multiply-add = 2 FLOPs, counted the way `torch.utils.flop_counter.FlopCounterMode`
counts them): matmuls, linears and convolutions only; biases, norms, activations, softmax, RoPE,
position-embedding resizing and the embedding lookup count zero.

  * SAM per view batch of `count` views of side S, grid g = S/16, N = g^2 tokens, windowed blocks
    see N_p = (14*ceil(g/14))^2 zero-padded tokens:
      patch conv 2*N*(3*16^2)*w; per windowed block 2*N_p*w*4w (qkv + proj) + 4*N_p*196*w (QK^T, AV)
      + 4*N_p*w*14 (decomposed rel-pos) + 2*N*w*2m (MLP); per global block the same with N, N^2 and g;
      neck 2*N*w*256 + 2*N*256*256*9; net_2 2*(N/4)*256*512*9; net_3 2*(N/16)*512*1024*9.
  * CLIP per view batch, T = (S/64)^2 + 1 tokens: layers * [2*T*w*(4w + 2m) + 4*T^2*w].
  * projector per view batch: 2*(S/64)^2*2048*1280.
  * decoder per token: q/k/v/o 2*d*(H + 2*KVH)*hd + 2*H*hd*d per layer; dense layer 0 3*2*d*I;
    each MoE layer router 2*d*E + shared expert 3*2*d*(n_shared*I_moe) + k routed 3*2*d*I_moe;
    lm_head 2*d*V per position where logits are computed (the project's model: last position only
    in prefill -> `logits_positions=1`).
  * attention core per layer: 4*q*kv*H*hd. How causal attention is counted is ONE switch,
    `AttentionPolicy` (default `FULL`): FULL counts the whole L x L product of a causal prefill, as
    FlopCounterMode does for scaled_dot_product_attention (it ignores is_causal); CAUSAL_HALF counts
    only the keys each query can see (sum_{i=1..L} i = L(L+1)/2), the algorithmic minimum, which is
    what the doc's worked prefill numbers use. Non-causal attention (SAM, CLIP) and a decode step
    (one query over kv keys) are the same under both.
  Official config: 1024^2 view 1139.97 GF, 640^2 tile 388.15 GF, decode step 1.1482 GF + 61,440*c.

Bytes (HBM traffic; a model, not a measurement; dtype bytes from the manifest, bf16 = 2):
  * weights: every weight a stage invocation uses is read once per invocation (no reuse through
    L2 across invocations). Vision: all SAM / CLIP (without its unused patch conv) / projector
    weights once per view batch. Decoder: attention, norms, dense FFN, routers, shared experts and
    the routed experts that receive at least one token. With T tokens each picking k of E experts,
    the expected number of distinct experts touched is E*(1 - (1 - k/E)^T) (uniform routing):
    exactly k at T = 1 (decode, batch 1), ~E for a prompt of hundreds of tokens. The lm_head is
    read whole whenever logits are computed; the embedding rows of the input tokens are read.
  * KV cache: 2*KVH*hd*dtype bytes per token per layer (5,120 B for bf16 official). Prefill
    writes the prompt's K,V and reads them once; decode step at KV length c reads c tokens' K,V
    and writes one token's per layer. (Flash kernels re-read K/V once per query block; not counted.)
  * activations (approximate, a lower bound): each matmul/conv reads its input and writes its
    output once; attention reads Q and writes O (K/V are the KV cache above; in SAM/CLIP they are
    activations); SAM's rel-pos bias (heads x Nq x Nk per attention) is written once and read once
    by the attention kernel; norms read+write, residual adds read 2 + write 1, activation functions
    read+write. RoPE, softmax scratch and MoE gather/scatter copies are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum

from dsocr_perf.dsocr import stages
from dsocr_perf.dsocr.config import ClipConfig, DecoderConfig, ModelConfig, ProjectorConfig, SamConfig
from dsocr_perf.dsocr.workload import DOWNSAMPLE, View, Workload


class AttentionPolicy(str, Enum):
    """How the core of a *causal* attention is counted (see the module docstring)."""

    FULL = "full"                # L x L, as FlopCounterMode counts SDPA (the default)
    CAUSAL_HALF = "causal-half"  # sum_{i=1..L} i: only the keys a query can see


DEFAULT_ATTENTION_POLICY = AttentionPolicy.FULL

DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
               "float32": 4, "fp32": 4, "float": 4, "tf32": 4}


def dtype_bytes(dtype: str | None) -> int:
    """Bytes per element of a dtype name as the manifest writes it ('bfloat16', 'torch.bfloat16')."""
    if dtype is None:
        return 2
    name = str(dtype).lower().removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class Cost:
    """FLOPs and modelled HBM bytes of one piece of work."""

    flops: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    kv_read_bytes: int = 0
    kv_write_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.kv_read_bytes + self.kv_write_bytes

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)))

    def times(self, k: int) -> "Cost":
        return Cost(*(getattr(self, f.name) * k for f in fields(Cost)))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(Cost)} | {"bytes": self.bytes}


def _policy(policy) -> AttentionPolicy:
    return AttentionPolicy(policy if policy is not None else DEFAULT_ATTENTION_POLICY)


def _linear(tokens: int, n_in: int, n_out: int, nbytes: int) -> tuple[int, int]:
    """(FLOPs, activation bytes) of a linear layer on `tokens` rows: read input, write output."""
    return 2 * tokens * n_in * n_out, tokens * (n_in + n_out) * nbytes


def _elementwise(tokens: int, width: int, norms: int, residuals: int, act_width: int, nbytes: int) -> int:
    """Activation bytes of a block's norms (r+w), residual adds (2r+w) and activation (r+w)."""
    return tokens * (norms * 2 * width + residuals * 3 * width + 2 * act_width) * nbytes


# ---------------------------------------------------------------------------------------------
# parameter counts (weights read per invocation)

def sam_params(c: SamConfig) -> int:
    w, hd = c.width, c.width // c.heads
    grid = c.img_size // c.patch_size
    o, (c2, c3) = c.out_chans, c.downsample_channels
    n = 3 * c.patch_size ** 2 * w + w + grid * grid * w           # patch conv + bias, pos_embed
    for b in range(c.depth):
        side = grid if b in c.global_attn_indexes else c.window_size
        n += 4 * w + 3 * w * w + 3 * w + w * w + w                 # norms, qkv, proj
        n += 2 * (2 * side - 1) * hd                               # rel_pos_h, rel_pos_w
        n += 2 * w * c.mlp_dim + c.mlp_dim + w                     # lin1, lin2
    n += w * o + 2 * o + o * o * 9 + 2 * o                         # neck
    return n + o * c2 * 9 + c2 * c3 * 9                            # net_2, net_3


def clip_params(c: ClipConfig, include_patch_conv: bool = False) -> int:
    w, m = c.width, c.mlp_dim
    n = w + c.num_positions * w + 2 * w                            # class token, positions, pre-LN
    n += c.layers * (4 * w + 3 * w * w + 3 * w + w * w + w + 2 * w * m + m + w)
    return n + (3 * c.patch_size ** 2 * w if include_patch_conv else 0)


def projector_params(c: ProjectorConfig) -> int:
    return c.input_dim * c.n_embed + c.n_embed


def _swiglu_params(d: int, inner: int) -> int:
    return 3 * d * inner


def decoder_layer_params(c: DecoderConfig, layer: int, experts: float | None = None) -> float:
    """Weights of one decoder layer; `experts` = routed experts counted (default: all)."""
    d, hd = c.hidden_size, c.head_dim
    n = 2 * d + d * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd + c.num_attention_heads * hd * d
    if not c.is_moe_layer(layer):
        return n + _swiglu_params(d, c.intermediate_size)
    experts = c.n_routed_experts if experts is None else experts
    n += c.n_routed_experts * d + _swiglu_params(d, c.n_shared_experts * c.moe_intermediate_size)
    return n + experts * _swiglu_params(d, c.moe_intermediate_size)


def model_params(c: ModelConfig) -> int:
    """All checkpoint parameters (3,336,106,240 for the official preset)."""
    d = c.decoder
    n = sam_params(c.sam) + clip_params(c.clip, include_patch_conv=True) + projector_params(c.projector)
    n += 2 * d.hidden_size                                          # image_newline, view_seperator
    n += 2 * d.vocab_size * d.hidden_size + d.hidden_size           # embed, lm_head, final norm
    return n + sum(int(decoder_layer_params(d, layer)) for layer in range(d.num_hidden_layers))


def experts_touched(tokens: int, n_experts: int, per_token: int) -> float:
    """Expected distinct routed experts hit by `tokens` tokens choosing `per_token` each, uniformly."""
    if tokens <= 0:
        return 0.0
    return n_experts * (1.0 - (1.0 - per_token / n_experts) ** tokens)


# ---------------------------------------------------------------------------------------------
# vision

def sam_cost(c: SamConfig, side: int, count: int = 1, nbytes: int = 2) -> Cost:
    """SAM ViT-B on a batch of `count` views of `side` pixels."""
    w, m = c.width, c.mlp_dim
    g = side // c.patch_size
    n = g * g
    ws = c.window_size
    n_pad = (ws * math.ceil(g / ws)) ** 2
    flops, act = 2 * n * (3 * c.patch_size ** 2) * w, n * (3 * c.patch_size ** 2 + w) * nbytes
    for b in range(c.depth):
        if b in c.global_attn_indexes:
            t, keys, rel = n, n, g            # tokens through attention, keys per query, rel-pos rows
        else:
            t, keys, rel = n_pad, ws * ws, ws
        f_qkv, a_qkv = _linear(t, w, 3 * w, nbytes)
        f_proj, a_proj = _linear(t, w, w, nbytes)
        f_l1, a_l1 = _linear(n, w, m, nbytes)
        f_l2, a_l2 = _linear(n, m, w, nbytes)
        core = 4 * t * keys * w
        relpos = 4 * t * w * rel
        flops += f_qkv + f_proj + core + relpos + f_l1 + f_l2
        bias = 2 * c.heads * t * keys * nbytes                        # rel-pos bias written, then read
        attn_io = 4 * t * w * nbytes                                   # q, k, v read; o written
        act += a_qkv + a_proj + a_l1 + a_l2 + bias + attn_io + _elementwise(n, w, 2, 2, m, nbytes)
    o, (c2, c3) = c.out_chans, c.downsample_channels
    g2 = math.ceil(g / 2)
    g3 = math.ceil(g2 / 2)
    flops += 2 * n * w * o + 2 * n * o * o * 9 + 2 * g2 * g2 * o * c2 * 9 + 2 * g3 * g3 * c2 * c3 * 9
    act += (n * (w + o) + 2 * n * o + n * (o + o) + 2 * n * o      # conv 1x1, LN2d, conv 3x3, LN2d
            + n * o + g2 * g2 * c2 + g2 * g2 * c2 + g3 * g3 * c3) * nbytes   # net_2, net_3
    return Cost(flops * count, sam_params(c) * nbytes, act * count)


def clip_cost(c: ClipConfig, grid: int, count: int = 1, nbytes: int = 2) -> Cost:
    """CLIP-L on the SAM map (grid x grid) of a batch of `count` views: T = grid^2 + 1 tokens."""
    w, m = c.width, c.mlp_dim
    t = grid * grid + 1
    per_layer = 2 * t * w * (4 * w + 2 * m) + 4 * t * t * w
    act_layer = (t * (w + 3 * w) + t * 2 * w + t * (w + m) + t * (m + w)) * nbytes   # qkv, proj, fc1, fc2
    act_layer += 4 * t * w * nbytes + _elementwise(t, w, 2, 2, m, nbytes)
    act = c.layers * act_layer + 3 * t * w * nbytes                                  # + embeddings, pre-LN
    return Cost(c.layers * per_layer * count, clip_params(c) * nbytes, act * count)


def projector_cost(c: ProjectorConfig, grid: int, count: int = 1, nbytes: int = 2) -> Cost:
    """Concatenate [CLIP | SAM] features and project: grid^2 tokens per view."""
    flops, act = _linear(grid * grid, c.input_dim, c.n_embed, nbytes)
    act += grid * grid * c.input_dim * nbytes                     # the concatenation writes its input
    return Cost(flops * count, projector_params(c) * nbytes, act * count)


@dataclass(frozen=True)
class ViewCost:
    view: View
    sam: Cost
    clip: Cost
    projector: Cost

    @property
    def total(self) -> Cost:
        return self.sam + self.clip + self.projector


def view_costs(config: ModelConfig, workload: Workload, nbytes: int = 2) -> list[ViewCost]:
    """One entry per view batch, in execution order (tiles, then global)."""
    out = []
    for v in workload.views:
        grid = v.side // config.sam.patch_size // DOWNSAMPLE
        out.append(ViewCost(v, sam_cost(config.sam, v.side, v.count, nbytes),
                            clip_cost(config.clip, grid, v.count, nbytes),
                            projector_cost(config.projector, grid, v.count, nbytes)))
    return out


# ---------------------------------------------------------------------------------------------
# decoder

def attention_core_flops(c: DecoderConfig, queries: int, keys: int, policy=None, causal: bool = True) -> int:
    """QK^T + AV of one layer: `queries` new tokens attending over `keys` cached+new tokens."""
    width = c.num_attention_heads * c.head_dim
    if causal and _policy(policy) is AttentionPolicy.CAUSAL_HALF:
        first = keys - queries + 1                                   # keys seen by the first query
        visible = (first + keys) * queries // 2                      # sum over the queries
        return 4 * visible * width
    return 4 * queries * keys * width


def kv_bytes_per_token_layer(c: DecoderConfig, nbytes: int = 2) -> int:
    return 2 * c.num_key_value_heads * c.head_dim * nbytes


def decoder_layer_cost(c: DecoderConfig, layer: int, tokens: int, keys: int, policy=None,
                       nbytes: int = 2) -> Cost:
    """One decoder layer on `tokens` new tokens with `keys` tokens in the KV cache after writing them."""
    d, hd, h, kvh = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads
    f_q, a_q = _linear(tokens, d, h * hd, nbytes)
    f_kv, a_kv = _linear(tokens, d, 2 * kvh * hd, nbytes)
    f_o, a_o = _linear(tokens, h * hd, d, nbytes)
    flops = f_q + f_kv + f_o + attention_core_flops(c, tokens, keys, policy)
    act = a_q + a_kv + a_o + 2 * tokens * h * hd * nbytes            # attention reads Q, writes O
    if c.is_moe_layer(layer):
        k, e, inner = c.num_experts_per_tok, c.n_routed_experts, c.moe_intermediate_size
        shared = c.n_shared_experts * inner
        f_r, a_r = _linear(tokens, d, e, nbytes)
        flops += f_r + 3 * 2 * tokens * d * shared + k * 3 * 2 * tokens * d * inner
        act += a_r + tokens * 3 * (d + shared) * nbytes + k * tokens * 3 * (d + inner) * nbytes
        act += tokens * 3 * shared * nbytes + k * tokens * 3 * inner * nbytes    # silu * up
        act += _elementwise(tokens, d, 2, 2, 0, nbytes) + k * tokens * d * 2 * nbytes  # weighted sum
        used = experts_touched(tokens, e, k)
    else:
        inner = c.intermediate_size
        flops += 3 * 2 * tokens * d * inner
        act += tokens * 3 * (d + inner) * nbytes + tokens * 3 * inner * nbytes
        act += _elementwise(tokens, d, 2, 2, 0, nbytes)
        used = None
    weights = round(decoder_layer_params(c, layer, used) * nbytes)
    per_token = kv_bytes_per_token_layer(c, nbytes)
    return Cost(flops, weights, act, kv_read_bytes=keys * per_token, kv_write_bytes=tokens * per_token)


def lm_head_cost(c: DecoderConfig, tokens: int, logits_positions: int, nbytes: int = 2) -> Cost:
    """Embedding lookup of `tokens` rows + final norm + lm_head on `logits_positions` positions."""
    d, v = c.hidden_size, c.vocab_size
    flops = 2 * logits_positions * d * v
    weights = (tokens * d + d + (v * d if logits_positions else 0)) * nbytes
    act = (2 * tokens * d + logits_positions * (d + v)) * nbytes
    return Cost(flops, weights, act)


def llm_prefill_cost(c: DecoderConfig, prompt_tokens: int, *, logits_positions: int = 1,
                     policy=None, nbytes: int = 2) -> Cost:
    """The decoder's prompt pass over `prompt_tokens` positions (embeddings given)."""
    total = lm_head_cost(c, prompt_tokens, logits_positions, nbytes)
    for layer in range(c.num_hidden_layers):
        total += decoder_layer_cost(c, layer, prompt_tokens, prompt_tokens, policy, nbytes)
    return total


def decode_step_cost(c: DecoderConfig, kv_length: int, *, policy=None, nbytes: int = 2) -> Cost:
    """One generated token at batch 1 whose attention sees `kv_length` keys (itself included)."""
    total = lm_head_cost(c, 1, 1, nbytes)
    for layer in range(c.num_hidden_layers):
        total += decoder_layer_cost(c, layer, 1, kv_length, policy, nbytes)
    return total


def decode_layer_rows(config: ModelConfig, decode_kv_lengths, *, policy=None, nbytes: int = 2) -> list[dict]:
    """Per decode step and per decoder layer: the `decode_model` view.

    Columns: step, kv_length, layer, block ('dense'|'moe'|'lm_head'), flops, attention_flops,
    weight_bytes, activation_bytes, kv_read_bytes, kv_write_bytes, bytes. The lm_head row (with the
    embedding row read and the final norm) has layer = num_hidden_layers. Summing a step's rows
    gives `decode_step_cost`.
    """
    c = config.decoder
    rows = []
    for step, kv in enumerate(decode_kv_lengths):
        for layer in range(c.num_hidden_layers):
            cost = decoder_layer_cost(c, layer, 1, kv, policy, nbytes)
            rows.append(_row(step, kv, layer, "moe" if c.is_moe_layer(layer) else "dense", cost,
                             attention_core_flops(c, 1, kv, policy)))
        rows.append(_row(step, kv, c.num_hidden_layers, "lm_head", lm_head_cost(c, 1, 1, nbytes), 0))
    return rows


DECODE_MODEL_COLUMNS = ("step", "kv_length", "layer", "block", "flops", "attention_flops", "weight_bytes",
                        "activation_bytes", "kv_read_bytes", "kv_write_bytes", "bytes")


def _row(step, kv, layer, block, cost: Cost, attention_flops: int) -> dict:
    return {"step": step, "kv_length": kv, "layer": layer, "block": block, "flops": cost.flops,
            "attention_flops": attention_flops, "weight_bytes": cost.weight_bytes,
            "activation_bytes": cost.activation_bytes, "kv_read_bytes": cost.kv_read_bytes,
            "kv_write_bytes": cost.kv_write_bytes, "bytes": cost.bytes}


# ---------------------------------------------------------------------------------------------
# one page, per stage

VISION_STAGES = (stages.SAM, stages.CLIP, stages.PROJECTOR)


def page_costs(config: ModelConfig, workload: Workload, decode_kv_lengths=None, *, policy=None,
               logits_positions: int = 1, nbytes: int = 2) -> dict[str, Cost]:
    """Cost per stage name of one page: the totals over that stage's instances within the page.

    sam/clip/projector: summed over the view batches; llm_prefill: the decoder's prompt pass;
    prefill = vision + llm_prefill; decode = decode_step = the sum of the steps (absent when
    `decode_kv_lengths` is None); request = prefill + decode.
    """
    views = view_costs(config, workload, nbytes)
    out = {stages.SAM: sum((v.sam for v in views), Cost()),
           stages.CLIP: sum((v.clip for v in views), Cost()),
           stages.PROJECTOR: sum((v.projector for v in views), Cost())}
    out[stages.LLM_PREFILL] = llm_prefill_cost(config.decoder, workload.prompt_tokens,
                                               logits_positions=logits_positions, policy=policy, nbytes=nbytes)
    out[stages.PREFILL] = sum((out[s] for s in (*VISION_STAGES, stages.LLM_PREFILL)), Cost())
    if decode_kv_lengths is not None:
        decode = sum((decode_step_cost(config.decoder, kv, policy=policy, nbytes=nbytes)
                      for kv in decode_kv_lengths), Cost())
        out[stages.DECODE] = decode
        out[stages.DECODE_STEP] = decode
        out[stages.REQUEST] = out[stages.PREFILL] + decode
    return out


def attention_flops(config: ModelConfig, workload: Workload, decode_kv_lengths=None, *, policy=None) -> dict[str, int]:
    """The attention-core FLOPs (QK^T and AV) inside each stage of `page_costs`, same keys; the rest of a
    stage's FLOPs are linear layers, convolutions and SAM's decomposed rel-pos products (matmuls). Lets
    hardware-counted work be compared per kernel class (attention kernels vs GEMMs)."""
    sam, clip, dec = config.sam, config.clip, config.decoder
    out = {stages.SAM: 0, stages.CLIP: 0, stages.PROJECTOR: 0}
    for v in workload.views:
        g = v.side // sam.patch_size
        n, ws = g * g, sam.window_size
        n_pad = (ws * math.ceil(g / ws)) ** 2
        for b in range(sam.depth):
            t, keys = (n, n) if b in sam.global_attn_indexes else (n_pad, ws * ws)
            out[stages.SAM] += 4 * t * keys * sam.width * v.count
        t = (g // DOWNSAMPLE) ** 2 + 1
        out[stages.CLIP] += clip.layers * 4 * t * t * clip.width * v.count
    prompt = workload.prompt_tokens
    out[stages.LLM_PREFILL] = dec.num_hidden_layers * attention_core_flops(dec, prompt, prompt, policy)
    out[stages.PREFILL] = sum(out[s] for s in (*VISION_STAGES, stages.LLM_PREFILL))
    if decode_kv_lengths is not None:
        decode = sum(dec.num_hidden_layers * attention_core_flops(dec, 1, kv, policy) for kv in decode_kv_lengths)
        out[stages.DECODE] = out[stages.DECODE_STEP] = decode
        out[stages.REQUEST] = out[stages.PREFILL] + decode
    return out
