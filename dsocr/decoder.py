"""The DeepSeek-MoE decoder of DeepSeek-OCR v1 ("DeepSeek3B-MoE-A570M"), with a KV cache.

Plain multi-head attention (no MLA) with rotate-half RoPE over the full head dim, RMSNorm computed in
fp32, layer 0 a dense SwiGLU MLP, later layers a mixture of experts: a fp32 softmax router picks the
top-k routed SwiGLU experts (weights are the raw probabilities: no renormalisation, scale 1.0) and a
shared SwiGLU expert is always added. Facts: the checkpoint's config.json and the vendor's
modeling_deepseekv2.py (MoE gate, moe_infer), read for facts only; tests/test_crosscheck_decoder.py compares
this decoder with transformers' port.

Parameter names follow the official checkpoint (`embed_tokens`, `layers.L.self_attn.q_proj`, ...).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from dsocr_perf.dsocr.config import DecoderConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)   # scale after casting back, as the reference does


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: (B, heads, max_len, head_dim).

    `length` (a host int) is how many positions are filled; decoding never reads it from the device.
    """

    def __init__(self, cfg: DecoderConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0


def rope_tables(head_dim: int, theta: float, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (T, head_dim) for rotate-half RoPE: frequency i drives dims i and i + head_dim/2."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        dim = cfg.hidden_size
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, start: int) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))   # (B, H, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
        if start == 0:       # prefill: plain causal attention over the prompt
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:         # decode: one query sees every cached position
            y = F.scaled_dot_product_attention(q, k, v)
        else:                # a chunk after a cached prefix: query t sees keys up to start + t
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def tokens_per_expert(expert_ids: torch.Tensor, n_experts: int) -> list[int]:
    """How many (token, slot) assignments each expert got, as host ints.

    On a real device this is one device->host copy per MoE layer (the vendor code does the same sync).
    On the meta device the routing is unknown, so the assignments are spread evenly over the experts:
    every expert-MLP FLOP count depends only on the total, so FlopCounterMode still counts exactly the
    FLOPs of top-k experts per token (batch-1 decode with top-6 -> six experts with one token each).
    """
    if expert_ids.device.type == "meta":
        total = expert_ids.numel()
        return [total // n_experts + (1 if e < total % n_experts else 0) for e in range(n_experts)]
    return torch.bincount(expert_ids, minlength=n_experts).tolist()


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C) -> (weights (N, k) fp32, expert ids (N, k)): fp32 router logits, softmax over all experts,
    top-k unsorted; the weights are the raw probabilities (no renormalisation, scale 1.0)."""
    router_logits = F.linear(x.float(), router_weight.float())
    return router_logits.softmax(dim=-1).topk(top_k, dim=-1, sorted=False)


class MoE(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, cfg.n_routed_experts, bias=False)   # the router
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.n_routed_experts))
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                     # (N, C)
        weights, expert_ids = route(x, self.gate.weight, self.top_k)
        routed = self.run_experts(x, expert_ids.reshape(-1))            # (N * k, C), slot order
        routed = (routed.view(-1, self.top_k, shape[-1]).float() * weights[..., None]).sum(dim=1)
        return (routed.to(x.dtype) + self.shared_experts(x)).view(shape)

    def run_experts(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Group the (token, slot) assignments by expert, run only experts that got tokens, ungroup."""
        order = expert_ids.argsort()
        grouped = x[order // self.top_k]                                 # (N * k, C), by expert
        outputs, begin = [], 0
        for expert, count in zip(self.experts, tokens_per_expert(expert_ids, len(self.experts))):
            if count:
                outputs.append(expert(grouped[begin:begin + count]))
                begin += count
        out = torch.empty_like(grouped)
        out[order] = torch.cat(outputs)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, cache, start):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, self.layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


# On CUDA, PyTorch may route SDPA to cuDNN attention, which builds a new execution plan for every new KV
# length: milliseconds of host time per decode step (seen on an H100, torch 2.11). Flash / memory-efficient
# attention have no per-shape setup, so the decoder keeps to them.
DECODER_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device):
    return sdpa_kernel(DECODER_SDPA_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


class Decoder(nn.Module):
    """Token embeddings, the decoder layers and the final norm (no lm_head: the caller owns it)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.decoder_config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        w = self.embed_tokens.weight
        return KVCache(self.decoder_config, batch, max_len, w.device, w.dtype)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """h: input embeddings (B, T, C) at positions cache.length .. + T - 1 -> normed hidden states."""
        cfg = self.decoder_config
        start = cache.length if cache is not None else 0
        T = h.shape[1]
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {start + T} needed")
        positions = torch.arange(start, start + T, device=h.device)
        cos, sin = rope_tables(cfg.head_dim, cfg.rope_theta, positions, h.dtype)
        with attention_backends(h.device):
            for layer in self.layers:
                h = layer(h, cos, sin, cache, start)
        if cache is not None:
            cache.length = start + T
        return self.norm(h)
