"""The fast decode engine: the same decoder function as decoder.py, batch 1, one CUDA graph per step.

The faithful engine (decoder.py + generate.py) follows the vendor code and is what traces study by
default: ~1,080 kernel launches per token and a host sync in every MoE layer. This engine keeps the
host out of the step:

- static shapes: the KV cache (a decoder.KVCache) holds `capacity` positions, prompt + max_new_tokens
  rounded up to CAPACITY_STEP; every step attends over all of them through an additive mask that hides
  the keys after the current position, and that position lives in a device tensor;
- routing without a host read: the router is the faithful one (`decoder.route`: fp32 logits, softmax,
  top-k unsorted, raw probabilities); the chosen experts' weights, stacked once at build ((E, 2I, C)
  gate|up, (E, C, I) down), are applied by torch._grouped_mm to the rows sorted by expert, reading each
  chosen expert once where it is (CUDA sm90 bf16, or the CPU); elsewhere they are gathered by index and
  applied with two bmm (the first H100 traces of this engine showed that gather, `indexSelectSmallIndex`,
  as 32% of decode's kernel time);
- attention of the one query as two fp32 batched products over the whole static cache (the fused SDPA
  kernels took 55 us a layer for it, 24% of decode's kernel time, in those traces);
- fewer kernels: q|k|v and the gate|up of the dense and shared MLPs are one matrix each, RoPE turns
  q and k together from tables built per capacity, RMSNorm is one F.rms_norm call and the scale (same
  rounding points as decoder.RMSNorm: fp32 normalise, cast back, then scale);
- the step (embedding -> logits, plus the position increment) is captured once per capacity in a
  hand-made `torch.cuda.CUDAGraph` and replayed; on the CPU the same `forward` runs eagerly.

Why a hand-made graph rather than torch.compile(mode="reduce-overhead"): the captured kernels are the
eager ATen kernels the CPU tests check, so what the tests cover is what the GPU replays; capture takes
a second instead of minutes of Inductor compilation; the GPU machine needs no Triton; and the graph's
inputs (token, position) and output (logits) are explicit buffers, so each `decode_step` NVTX range
holds exactly one cudaGraphLaunch whose kernels nsys (--cuda-graph-trace=node) attributes to it.

Where the capture happens: `FastDecoder.prepare(tokens)` builds the static state for that capacity,
warms the step up on a side stream, captures and replays it once, and keeps it for every later page
of the same capacity. The session calls it before the `prefill` range opens, so a capture never lands
inside a stage; the launcher's warm-up page (one per tile grid, same max_new_tokens) makes it happen
before cudaProfilerStart. Each capacity keeps its own cache and graph memory pool (for the official
preset ~61 KB of cache per position plus tens of MB of graph intermediates).

Memory: the stacked and fused weights are copies (~5 GB for the official preset in bf16) beside the
model's own tensors, which the prefill still uses: the prefill is the faithful one, writing straight
into the static cache. Work: every step's attention reads all `capacity` positions (the faithful one
reads the filled ones); the analytic FLOP model counts the real KV lengths for both engines.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from dsocr_perf.dsocr.decoder import MLP, Attention, DecoderLayer, KVCache, MoE, RMSNorm, rope_tables, route
from dsocr_perf.dsocr.model import DeepseekOCR

CAPACITY_STEP = 64    # static cache sizes are multiples of this: pages of one tile grid share a graph
WARMUP_STEPS = 2      # eager steps on a side stream before capture (library handles, kernel choices)


def static_capacity(tokens: int) -> int:
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


def rms_norm(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """decoder.RMSNorm's rounding (normalise in fp32, round once to x's dtype, then scale) in two calls:
    F.rms_norm computes in fp32 whatever the input dtype."""
    return norm.weight * F.rms_norm(x, (x.shape[-1],), eps=norm.eps)


class FusedMLP(nn.Module):
    """SwiGLU with gate and up stacked in one matrix."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.register_buffer("gate_up", torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                             persistent=False)
        self.register_buffer("down", mlp.down_proj.weight.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down)


def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs here for this dtype and gives the plain product (CUDA: sm90 and bf16;
    the CPU has a reference implementation); else the MoE gathers expert weights instead."""
    grouped = getattr(torch, "_grouped_mm", None)
    if grouped is None:
        return False
    # On CUDA only the sm90 bf16 kernel is graph-safe: other dtypes take a fallback that copies from the
    # host, which a CUDA graph capture refuses (seen on the H100 with the tiny preset in float32).
    if device.type == "cuda" and (dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) < (9, 0)):
        return False
    try:
        w = torch.randn(4, 32, 16, device=device).to(dtype)          # (E, out, in) as the stacked weights
        x = torch.randn(3, 16, device=device).to(dtype)
        offs = torch.tensor([0, 1, 1, 3], device=device, dtype=torch.int32)
        got = grouped(x, w.transpose(-2, -1), offs=offs).float()
        want = torch.cat([x[:1] @ w[1].T, x[1:3] @ w[3].T]).float()   # groups end at offs: 0 | 1 | 1 | 3
        return bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


class FastMoE(nn.Module):
    """The MoE without a host sync. With `grouped` (torch._grouped_mm) the (token, slot) pairs are sorted by
    expert and each expert's weights are read in place, once; without it each pair gathers its expert's
    weights by index (a copy of top_k experts per layer and step) and two bmm apply them."""

    def __init__(self, moe: MoE, grouped: bool = False):
        super().__init__()
        self.top_k = moe.top_k
        self.grouped = grouped
        experts = moe.experts
        self.register_buffer("router", moe.gate.weight.detach().float(), persistent=False)
        self.register_buffer("gate_up", torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight])
                                                     for e in experts]).detach(), persistent=False)  # (E, 2I, C)
        self.register_buffer("down", torch.stack([e.down_proj.weight for e in experts]).detach(),
                             persistent=False)                                                       # (E, C, I)
        self.shared = FusedMLP(moe.shared_experts)
        self.expert_ids: torch.Tensor | None = None    # the last call's choice (N, k); a graph output once captured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                          # (N, C)
        n, dim = x.shape
        weights, expert_ids = route(x, self.router, self.top_k)               # (N, k) fp32, (N, k)
        self.expert_ids = expert_ids
        slots = expert_ids.reshape(-1)                                        # (N * k,), slot order
        routed = (self._grouped if self.grouped else self._gathered)(x, slots).view(n, self.top_k, dim)
        routed = (routed * weights[..., None]).sum(dim=1)                     # fp32 (promoted), as the faithful sum
        return (routed.to(x.dtype) + self.shared(x)).view(shape)


    def _gathered(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        tokens = x.view(n, 1, dim, 1).expand(n, self.top_k, dim, 1).reshape(n * self.top_k, dim, 1)
        gate, up = torch.bmm(self.gate_up.index_select(0, slots), tokens).squeeze(-1).chunk(2, dim=-1)
        hidden = (F.silu(gate) * up).unsqueeze(-1)                            # (N * k, I, 1)
        return torch.bmm(self.down.index_select(0, slots), hidden).squeeze(-1)   # (N * k, C), slot order

    def _grouped(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Rows sorted by expert; `offs` ends each expert's group (computed on the device: no host read)."""
        order = slots.argsort(stable=True)
        rows = x.index_select(0, order // self.top_k)                         # (N * k, C), expert order
        counts = torch.zeros(self.gate_up.shape[0], dtype=torch.int32, device=x.device)
        offs = counts.scatter_add_(0, slots, torch.ones_like(slots, dtype=torch.int32)).cumsum(0, dtype=torch.int32)
        gate, up = torch._grouped_mm(rows, self.gate_up.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
        out = torch._grouped_mm(F.silu(gate) * up, self.down.transpose(-2, -1), offs=offs)
        return torch.empty_like(out).index_copy_(0, order, out)               # back to slot order


class FastAttention(nn.Module):
    """One query position against the static cache; q|k|v in one matrix."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.n_heads, self.head_dim = attn.n_heads, attn.head_dim
        self.register_buffer("qkv", torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                               attn.v_proj.weight]).detach(), persistent=False)
        self.register_buffer("out", attn.o_proj.weight.detach(), persistent=False)

    def forward(self, x, cos, sin, k_cache, v_cache, position, mask) -> torch.Tensor:
        """x (1, 1, C); cos/sin (1, D) at `position` (sin sign-folded, see StaticDecode); caches (1, H, cap, D)."""
        qkv = F.linear(x, self.qkv).view(3, self.n_heads, 1, self.head_dim)
        qk = qkv[:2]
        # rotate-half RoPE: roll gives [x2, x1], `sin` carries the minus of the first half (bit-equal to apply_rope)
        qk = qk * cos + qk.roll(self.head_dim // 2, dims=-1) * sin
        q, k, v = qk[0:1], qk[1:2], qkv[2:3]                                  # (1, H, 1, D) each
        k_cache.index_copy_(2, position, k)
        v_cache.index_copy_(2, position, v)
        # Two batched products in fp32 rather than a fused kernel: for one query the fused kernels tile 64
        # queries over H blocks and walk the whole cache (55 us a layer on the H100); these spread it out.
        scores = torch.matmul(q.float() * self.head_dim ** -0.5, k_cache.float().transpose(-1, -2)) + mask
        y = torch.matmul(scores.softmax(dim=-1), v_cache.float()).to(x.dtype)   # (1, H, 1, D)
        return F.linear(y.view(1, 1, -1), self.out)


class FastLayer(nn.Module):
    def __init__(self, layer: DecoderLayer, grouped: bool = False):
        super().__init__()
        self.input_layernorm = layer.input_layernorm
        self.self_attn = FastAttention(layer.self_attn)
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.mlp = FastMoE(layer.mlp, grouped) if isinstance(layer.mlp, MoE) else FusedMLP(layer.mlp)

    def forward(self, x, cos, sin, k_cache, v_cache, position, mask):
        x = x + self.self_attn(rms_norm(x, self.input_layernorm), cos, sin, k_cache, v_cache, position, mask)
        return x + self.mlp(rms_norm(x, self.post_attention_layernorm))


class StaticDecode:
    """Everything with the shape of one cache capacity: the KV cache, RoPE and mask tables, the input
    buffers (token, position) and, on CUDA, the captured step and its output buffer."""

    def __init__(self, decoder: FastDecoder, capacity: int):
        cfg, device, dtype = decoder.config, decoder.device, decoder.dtype
        self.decoder = decoder
        self.cache = KVCache(cfg, 1, capacity, device, dtype)
        cos, sin = rope_tables(cfg.head_dim, cfg.rope_theta, torch.arange(capacity, device=device), dtype)
        half = cfg.head_dim // 2
        self.cos, self.sin = cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)   # (capacity, D)
        self.key_positions = torch.arange(capacity, device=device)
        self.open_mask = torch.zeros(1, 1, 1, capacity, device=device, dtype=torch.float32)   # added to fp32 scores
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None            # the graph's output buffer
        self.expert_ids: list[torch.Tensor] = []           # the routing of the last step, one (1, k) per MoE layer

    @property
    def capacity(self) -> int:
        return self.cache.max_len

    @torch.inference_mode()
    def start(self):
        """After the prefill filled cache.length positions: the step function for greedy_decode."""
        self.position.fill_(self.cache.length)
        return self.step

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """token (1, 1) on the device -> logits (1, vocab) of the next position. With a graph the result
        is its output buffer, overwritten by the next step."""
        if self.cache.length >= self.capacity:
            raise ValueError(f"the static KV cache holds {self.capacity} positions; all are used")
        self.token.copy_(token)
        if self.graph is None:
            logits = self.decoder.forward(self)
        else:
            self.graph.replay()
            logits = self.logits
        self.cache.length += 1
        return logits


class FastDecoder:
    """Batch-1 decode over static caches, built once from a model; one StaticDecode per capacity."""

    def __init__(self, model: DeepseekOCR, cuda_graph: bool | None = None):
        body = model.model
        self.config = body.decoder_config
        self.device, self.dtype = body.embed_tokens.weight.device, body.embed_tokens.weight.dtype
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.grouped_experts = grouped_mm_works(self.device, self.dtype)
        with torch.no_grad():
            self.layers = [FastLayer(layer, self.grouped_experts) for layer in body.layers]
        self.embed = body.embed_tokens.weight.detach()
        self.norm = body.norm
        self.lm_head = model.lm_head.weight.detach()
        self.states: dict[int, StaticDecode] = {}

    @torch.inference_mode()
    def prepare(self, tokens: int) -> StaticDecode:
        """The static state for `tokens` positions (prompt + max_new_tokens), captured on first use; its
        cache is emptied for a new prompt."""
        capacity = static_capacity(tokens)
        state = self.states.get(capacity)
        if state is None:
            state = StaticDecode(self, capacity)
            if self.cuda_graph:
                try:
                    self._capture(state)
                except RuntimeError as exc:   # keep the session going, say so loudly: its decode is not graphed
                    state.graph = None
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    print(f"warning: CUDA graph capture failed for a {capacity}-position cache ({first}); "
                          "the fast engine runs these steps eagerly", file=sys.stderr, flush=True)
                    torch.cuda.synchronize(self.device)
            self.states[capacity] = state
        state.cache.length = 0
        return state

    def forward(self, s: StaticDecode) -> torch.Tensor:
        """One step from s.token at s.position, both read on the device: logits (1, vocab); the position
        advances by one. Shapes never change, so the graph captures it as is."""
        cos = s.cos.index_select(0, s.position)                              # (1, D)
        sin = s.sin.index_select(0, s.position)
        mask = s.open_mask.masked_fill(s.key_positions > s.position, float("-inf"))
        h = F.embedding(s.token, self.embed)                                 # (1, 1, C)
        for layer, k_cache, v_cache in zip(self.layers, s.cache.k, s.cache.v):
            h = layer(h, cos, sin, k_cache, v_cache, s.position, mask)
        s.position.add_(1)
        s.expert_ids = [layer.mlp.expert_ids for layer in self.layers if isinstance(layer.mlp, FastMoE)]
        return F.linear(rms_norm(h, self.norm)[:, -1], self.lm_head).float()

    def _capture(self, s: StaticDecode) -> None:
        """Warm up on a side stream, capture one step on that same stream (its cuBLAS workspace exists by
        then), replay it once (the first replay uploads the graph). These steps write garbage K/V at the
        first positions of the cache; the prefill overwrites them."""
        s.position.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.forward(s)
        side.synchronize()
        s.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(s.graph, stream=side):
            s.logits = self.forward(s)
        s.graph.replay()
        torch.cuda.synchronize(self.device)
