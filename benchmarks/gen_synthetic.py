"""Synthetic Nsight Systems SQLite exports of a DeepSeek-OCR session, at any size, with ground truth.

    python benchmarks/gen_synthetic.py --kernels 1000000 --out /tmp/syn1m.sqlite [--seed 0] [--force]

The tables are created from the real nsys DDL, read at run time from an export in ../shared (nothing
of NVIDIA's schema is stored in this repository). The rows describe two processes that share
correlation ids, each with a main thread running pages of DeepSeek-OCR:

    request (dsocr, start/end)  >  page (default domain, inline text)
        preprocess  >  prefill  >  [sam, clip, projector] x (tiles, global view), llm_prefill > layer > attention
        decode  >  decode_step (payload = step)  >  layer > attention, sampler (dsocr, inline text)

and a worker thread whose `prefetch` / `dsocr:detokenize` ranges overlap the main thread's in time.
Matrix kernels launch through the driver API (`cuLaunchKernelEx`), the rest through
`cudaLaunchKernel_v7000`; a few memcpy / memset ops and API calls without GPU work are mixed in;
a handful of warm-up kernels are launched outside every range. Every thread's GPU ops run in launch
order on the thread's own stream, behind the CPU, so kernels routinely run after their range popped;
the worker's `prefetch` also launches a long kernel on a second stream that overlaps its other work.

Ground truth (OUT.truth.json) is computed from the construction, not from the rows: per range name
(`dsocr:sam`, `page`, ...) with NVIDIA's launch-time semantics (an op belongs to every range on the
launching thread that encloses its launch call):
    instances        range instances
    kernels          kernels launched inside an instance, summed over instances (= nvtx_kern_sum Kern Inst, summed)
    inclusive_ns     their total duration (= nvtx_kern_sum Total Time, summed over kernel names)
    exclusive_ns     kernel ns whose innermost range is this one
    gpu_ops, gpu_op_ns   the same over kernels + memcpy + memset
    busy_ns          union of the instance's kernel intervals (< inclusive_ns only for `prefetch`, the one range
                     with kernels on two streams)
    span_ns          per instance first op start -> last op end (like nvtx_gpu_proj_sum), summed
    kernel_span_ns   the same over kernels only
    cpu_ns           range wall time (end - start), summed
    launches         launch calls (kernel, memcpy, memset) inside the instances
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCHEMA_SOURCE = SHARED / "fixtures/nsys/nvtx-features-2025.3.sqlite"
# The 2025.3 fixture has no memset; its DDL comes from another real export of the same era.
MEMSET_SCHEMA_SOURCE = SHARED / "traces/nsys-sqlite/nsys-2024.6.2_llama3_real_inference_simulation.sqlite"

TABLES = ["StringIds", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_MEMCPY",
          "NVTX_EVENTS", "ThreadNames", "PROCESSES", "TARGET_INFO_GPU", "TARGET_INFO_SESSION_START_TIME",
          "META_DATA_EXPORT", "META_DATA_CAPTURE"]
COPIED_TABLES = ["TARGET_INFO_SESSION_START_TIME", "META_DATA_EXPORT", "ENUM_NSYS_EVENT_TYPE",
                 "ENUM_NSYS_EVENT_CLASS", "ENUM_CUDA_MEMCPY_OPER", "ENUM_CUDA_MEM_KIND",
                 "ENUM_CUDA_KERNEL_LAUNCH_TYPE", "ENUM_CUDA_FUNC_CACHE_CONFIG", "ENUM_CUDA_SHARED_MEM_LIMIT_CONFIG"]

NVTX_MARK, NVTX_PUSHPOP, NVTX_STARTEND, NVTX_DOMAIN_CREATE = 34, 59, 60, 75
DSOCR_DOMAIN_ID = 1
VM_BITS = 1 << 48

# Token opcodes of a thread's program (what the thread does, in order).
IDLE, PUSH, POP, LAUNCH, API, MARK = 0, 1, 2, 3, 4, 5


VERSION = 3   # bump when the rows or the truth change: the benchmark regenerates cached files


class GeneratorError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# Ranges: (key, text, domain, style). domain "dsocr" with textId unless inline=True.
@dataclass(frozen=True)
class RangeKind:
    text: str
    dsocr: bool          # in domain dsocr (else the default domain)
    inline: bool         # text inline in NVTX_EVENTS.text (else through StringIds via textId)
    event_type: int = NVTX_PUSHPOP

    @property
    def name(self) -> str:
        return f"dsocr:{self.text}" if self.dsocr else self.text


RANGES = [
    RangeKind("request", True, False, NVTX_STARTEND),
    RangeKind("page", False, True),
    RangeKind("preprocess", True, False),
    RangeKind("prefill", True, False),
    RangeKind("sam", True, False),
    RangeKind("clip", True, False),
    RangeKind("projector", True, False),
    RangeKind("llm_prefill", True, False),
    RangeKind("layer", True, False),
    RangeKind("attention", False, True),
    RangeKind("decode", True, False),
    RangeKind("decode_step", True, False),
    RangeKind("sampler", True, True),
    RangeKind("prefetch", False, True),
    RangeKind("detokenize", True, False),
]
R = {r.text: i for i, r in enumerate(RANGES)}


# ---------------------------------------------------------------------------------------------------
# GPU op templates: kernels (name, short name, decode-size duration ns, driver API?, grid, block, regs, smem),
# then memcpy / memset. Durations are scaled per stage (vision kernels are long, decode kernels short).
@dataclass(frozen=True)
class OpKind:
    demangled: str
    short: str
    base_ns: int
    driver: bool = False
    kind: str = "kernel"      # kernel | memcpy | memset
    grid: tuple = (128, 1, 1)
    block: tuple = (256, 1, 1)
    registers: int = 32
    shared: int = 0
    bytes: int = 0
    copy_kind: int = 0
    side_stream: bool = False  # launched on the thread's second stream


OPS = [
    OpKind("nvjet_sm90_tst_128x128_64x4_2x1_v_bz_TNN", "nvjet_sm90_tst_128x128_64x4_2x1_v_bz_TNN", 9000, True,
           grid=(132, 1, 1), block=(384, 1, 1), registers=168, shared=213000),
    OpKind("nvjet_sm90_tst_64x8_64x16_4x1_v_bz_splitK_TNT", "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_splitK_TNT", 6000,
           True, grid=(64, 4, 1), block=(128, 1, 1), registers=154, shared=180000),
    OpKind("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
           "std::array<char *, 3>>(int, T2, T3)", "vectorized_elementwise_kernel", 2200),
    OpKind("void at::native::vectorized_elementwise_kernel<8, at::native::GeluCUDAKernelImpl, "
           "std::array<char *, 2>>(int, T2, T3)", "vectorized_elementwise_kernel", 2600),
    OpKind("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"
           "(int, float, const T1 *, const T1 *, const T1 *, T2 *, T2 *, T1 *)", "vectorized_layer_norm_kernel",
           3100, grid=(4096, 1, 1), block=(128, 1, 1), registers=40),
    OpKind("void rms_norm_kernel<c10::BFloat16, 1024>(T1 *, const T1 *, const T1 *, float, int)",
           "rms_norm_kernel", 2400, grid=(1, 1, 1), block=(1024, 1, 1)),
    OpKind("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>,"
           " false, true, false, false, false, true, false, false>(flash::Flash_fwd_params)", "flash_fwd_kernel",
           12000, grid=(8, 16, 1), block=(128, 1, 1), registers=255, shared=49152),
    OpKind("void apply_rotary_pos_emb_kernel<c10::BFloat16>(T1 *, const float *, int, int)", "apply_rotary_pos_emb_kernel",
           1900),
    OpKind("void at::native::sbtopk::gatherTopK<c10::BFloat16, unsigned int, 2, false>"
           "(at::cuda::detail::TensorInfo<T1, T2>, T2, T2, bool, T2, T2)", "gatherTopK", 4100),
    OpKind("void moe_align_block_size_kernel<int>(const T1 *, int *, int *, int *, int, int, int, unsigned long)",
           "moe_align_block_size_kernel", 3300, grid=(1, 1, 1), block=(1024, 1, 1)),
    OpKind("void fused_moe_kernel<cutlass::bfloat16_t, 64, 64, 32>(const T1 *, const T1 *, T1 *, const int *, int)",
           "fused_moe_kernel", 8000, grid=(512, 1, 1), block=(128, 1, 1), registers=128, shared=65536),
    OpKind("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, "
           "unsigned int, long, 4>>(T3)", "reduce_kernel", 5200),
    OpKind("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda, "
           "std::array<char *, 2>, 4>(int, T1, T2)", "unrolled_elementwise_kernel", 2000),
    OpKind("void at::native::vectorized_elementwise_kernel<4, at::native::BUnaryFunctor<float, float, float, "
           "at::native::MulFunctor<float>>, std::array<char *, 2>>(int, T2, T3)", "vectorized_elementwise_kernel",
           600_000, side_stream=True),
    OpKind("Memcpy HtoD (Pageable -> Device)", "memcpy_htod", 0, kind="memcpy", bytes=8 << 20, copy_kind=1),
    OpKind("Memcpy DtoH (Device -> Pinned)", "memcpy_dtoh", 0, kind="memcpy", bytes=8, copy_kind=2),
    OpKind("Memset (Device)", "memset", 0, kind="memset", bytes=1 << 20),
]
GEMM, GEMM_SMALL, ADD, GELU, LAYERNORM, RMSNORM, FLASH, ROPE, TOPK, MOE_ALIGN, MOE, ARGMAX, COPY, SIDE_SCALE = range(14)
HTOD, DTOH, MEMSET = 14, 15, 16
API_NAMES = {"runtime": "cudaLaunchKernel_v7000", "driver": "cuLaunchKernelEx",
             "memcpy": "cudaMemcpyAsync_v3020", "memset": "cudaMemsetAsync_v3020",
             "query": "cudaStreamIsCapturing_v10000"}
API_QUERY = len(OPS)   # the op id of an API call that launches nothing


# ---------------------------------------------------------------------------------------------------
# Programs: a thread's work as parallel token arrays (opcode, argument, duration scale, payload).
class Program:
    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, code, arg=0, scale=1.0, payload=-1):
        self.parts.append((np.array([code], np.int8), np.array([arg], np.int32),
                           np.array([scale], np.float32), np.array([payload], np.int64)))

    def extend(self, block: "Program", times: int = 1, payload_step: bool = False):
        code, arg, scale, payload = block.arrays()
        if payload_step:   # decode_step payloads count 0..times-1
            steps = np.repeat(np.arange(times, dtype=np.int64), len(code))
            payload = np.where(np.tile(payload, times) >= 0, steps, -1)
        else:
            payload = np.tile(payload, times)
        self.parts.append((np.tile(code, times), np.tile(arg, times), np.tile(scale, times), payload))

    def range(self, key: str, inner, payload=-1):
        self.add(PUSH, R[key], payload=payload)
        inner()
        self.add(POP, R[key])

    def ops(self, ops, scale=1.0):
        for op in ops:
            self.add(LAUNCH if op != API_QUERY else API, op, scale)

    def arrays(self):
        if not self.parts:
            return (np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(4))


LAYERS = 12
ATTENTION_OPS = [GEMM, ROPE, FLASH, GEMM]
MLP_OPS = [ADD, RMSNORM, GEMM_SMALL, TOPK, MOE_ALIGN, MOE, MOE, ADD]
SAM_BLOCKS, CLIP_LAYERS = 12, 24


def layer_block(scale: float) -> Program:
    p = Program()
    def body():
        p.ops([RMSNORM], scale)
        p.range("attention", lambda: p.ops(ATTENTION_OPS, scale))
        p.ops(MLP_OPS, scale)
    p.range("layer", body)
    return p


def decode_step_block() -> Program:
    p = Program()
    def body():
        p.extend(layer_block(1.0), LAYERS)
        p.range("sampler", lambda: p.ops([RMSNORM, GEMM, ARGMAX, API_QUERY, DTOH]))
    p.range("decode_step", body, payload=0)
    return p


def page_program(p: Program, rng, steps: int):
    tiles = int(rng.integers(2, 7))
    def preprocess():
        p.add(IDLE, 0, scale=float(rng.uniform(5e6, 15e6)))       # image decode + resize on the CPU
        p.ops([HTOD, MEMSET, COPY, ADD])
    def view(scale):
        p.range("sam", lambda: [p.ops([LAYERNORM, GEMM, FLASH, GEMM, ADD, GELU], scale) for _ in range(SAM_BLOCKS)])
        p.range("clip", lambda: [p.ops([LAYERNORM, GEMM, FLASH, GEMM, GELU], scale) for _ in range(CLIP_LAYERS)])
        p.range("projector", lambda: p.ops([COPY, GEMM], scale))
    def prefill():
        view(12.0 * tiles)
        view(12.0)
        p.range("llm_prefill", lambda: p.extend(layer_block(6.0), LAYERS))
    def decode():
        p.extend(decode_step_block(), steps, payload_step=True)
    def page():
        p.range("preprocess", preprocess)
        p.range("prefill", prefill)
        p.range("decode", decode)
    p.range("request", lambda: p.range("page", page))
    p.add(MARK, 0)
    p.add(IDLE, 0, scale=float(rng.uniform(1e6, 3e6)))


def count_kernels(block: Program) -> int:
    code, arg, _, _ = block.arrays()
    return int(np.count_nonzero((code == LAUNCH) & np.isin(arg, [i for i, o in enumerate(OPS) if o.kind == "kernel"])))


def main_program(budget: int, rng) -> Program:
    """Warm-up launches outside every range, then pages until the kernel budget is spent."""
    p = Program()
    p.ops([COPY, ADD, GEMM, ADD, COPY])
    probe = Program()
    page_program(probe, rng, 0)
    prefill_kernels = count_kernels(probe)
    step_kernels = count_kernels(decode_step_block())
    done = 5
    while done < budget:
        left = budget - done - prefill_kernels
        steps = max(1, min(int(rng.integers(128, 512)), -(-left // step_kernels)))
        page_program(p, rng, steps)
        done += prefill_kernels + steps * step_kernels
    return p


def worker_program(blocks: int, idle_ns: float) -> Program:
    block = Program()
    block.add(IDLE, 0, scale=idle_ns)
    block.range("prefetch", lambda: block.ops([HTOD, SIDE_SCALE, COPY, ADD]))
    block.add(IDLE, 0, scale=idle_ns)
    block.range("detokenize", lambda: block.ops([ARGMAX]))
    p = Program()
    p.extend(block, blocks)
    return p


# ---------------------------------------------------------------------------------------------------
# Timing: CPU timestamps per token, GPU intervals per op (FIFO on the thread's stream).
@dataclass
class Thread:
    pid: int
    tid: int
    device: int
    stream: int            # the second stream is stream + 1
    code: np.ndarray
    arg: np.ndarray
    payload: np.ndarray
    t: np.ndarray          # token start (ns)
    api_end: np.ndarray    # end of the API call of LAUNCH/API tokens
    op_start: np.ndarray   # GPU op interval of LAUNCH tokens (else 0)
    op_end: np.ndarray
    op_stream: np.ndarray  # stream of LAUNCH tokens
    correlation: np.ndarray  # per token (0 where no API call)

    @property
    def global_tid(self) -> int:
        return VM_BITS | (self.pid << 24) | self.tid

    @property
    def global_pid(self) -> int:
        return VM_BITS | (self.pid << 24)


def op_table():
    base = np.array([o.base_ns for o in OPS] + [0], np.float64)
    driver = np.array([o.driver for o in OPS] + [False])
    is_kernel = np.array([o.kind == "kernel" for o in OPS] + [False])
    nbytes = np.array([o.bytes for o in OPS] + [0], np.float64)
    return base, driver, is_kernel, nbytes


SIDE = np.array([o.side_stream for o in OPS] + [False])


def time_program(prog: Program, rng, t0: int, pid: int, tid: int, device: int, stream: int,
                 first_correlation: int) -> Thread:
    code, arg, scale, payload = prog.arrays()
    n = len(code)
    base, driver, is_kernel, nbytes = op_table()
    is_call = (code == LAUNCH) | (code == API)
    api_ns = np.where(driver[arg] & is_call, rng.integers(2500, 4000, n), rng.integers(3500, 6000, n))
    api_ns = np.where(code == API, rng.integers(300, 800, n), api_ns)
    step = np.select(
        [code == IDLE, (code == PUSH) | (code == POP), is_call, code == MARK],
        [scale.astype(np.int64), rng.integers(1200, 2500, n), api_ns + rng.integers(2000, 9000, n), 1500], 0)
    t = t0 + np.concatenate([[0], np.cumsum(step[:-1])]).astype(np.int64)
    api_end = np.where(is_call, t + api_ns, 0)

    launch = code == LAUNCH
    ops = arg[launch]
    dur = np.where(is_kernel[ops], base[ops] * scale[launch] * rng.lognormal(0.0, 0.15, len(ops)),
                   2000 + nbytes[ops] / 20.0).astype(np.int64)     # copies: 20 B/ns
    dur = np.maximum(dur, 1000)
    gap = 700                                             # the GPU's gap between back-to-back ops
    ready = api_end[launch] - 1500
    occupied = dur + gap
    side = SIDE[ops]
    end = np.zeros(len(ops), np.int64)
    for on_side in (False, True):
        sel = side == on_side
        cum = np.cumsum(occupied[sel])
        # FIFO stream: end_i = max(ready_i + d_i, end_{i-1} + d_i), solved as a max-plus prefix scan.
        end[sel] = cum + np.maximum.accumulate(ready[sel] - (cum - occupied[sel]))
    op_end = np.zeros(n, np.int64)
    op_start = np.zeros(n, np.int64)
    op_stream = np.zeros(n, np.int64)
    op_end[launch] = end - gap
    op_start[launch] = end - occupied
    op_stream[launch] = stream + side
    correlation = np.zeros(n, np.int64)
    correlation[is_call] = first_correlation + np.arange(np.count_nonzero(is_call))
    return Thread(pid, tid, device, stream, code, arg, payload, t, api_end, op_start, op_end, op_stream, correlation)


# ---------------------------------------------------------------------------------------------------
# Ground truth from the construction.
def pair_ranges(code: np.ndarray):
    """Matching (push token, pop token) index pairs and each range's parent range index (-1 at top)."""
    push_pos = np.flatnonzero(code == PUSH)
    pop_pos = np.flatnonzero(code == POP)
    delta = np.zeros(len(code), np.int64)
    delta[push_pos], delta[pop_pos] = 1, -1
    depth_after = np.cumsum(delta)
    level_push = depth_after[push_pos]           # 1 = outermost
    level_pop = depth_after[pop_pos] + 1
    order_push = np.lexsort((push_pos, level_push))
    order_pop = np.lexsort((pop_pos, level_pop))
    starts, ends, levels = push_pos[order_push], pop_pos[order_pop], level_push[order_push]
    by_start = np.argsort(starts, kind="stable")
    starts, ends, levels = starts[by_start], ends[by_start], levels[by_start]
    parent = np.full(len(starts), -1, np.int64)
    for lvl in range(2, int(levels.max(initial=0)) + 1):
        outer = np.flatnonzero(levels == lvl - 1)
        inner = np.flatnonzero(levels == lvl)
        parent[inner] = outer[np.searchsorted(starts[outer], starts[inner]) - 1]
    return starts, ends, parent


def range_truth(th: Thread):
    """Per range instance of one thread: kind, start/end ns, metrics (dict of arrays)."""
    code, arg = th.code, th.arg
    starts, ends, parent = pair_ranges(code)
    _, _, is_kernel, _ = op_table()
    launch = code == LAUNCH
    kern = launch & is_kernel[arg]
    dur = th.op_end - th.op_start

    def between(values):   # sum of values over tokens strictly inside each range
        c = np.concatenate([[0], np.cumsum(values)])
        return c[ends] - c[starts + 1]

    m = {
        "kernels": between(kern.astype(np.int64)),
        "inclusive_ns": between(np.where(kern, dur, 0)),
        "gpu_ops": between(launch.astype(np.int64)),
        "gpu_op_ns": between(np.where(launch, dur, 0)),
        "launches": between(launch.astype(np.int64)),
        "cpu_ns": th.t[ends] - th.t[starts],
    }
    # On one FIFO stream the first launched op starts first and the last one ends last, and kernels never
    # overlap (busy = their sum). Instances with side-stream kernels get the general formulas below.
    mixed = between((launch & SIDE[arg]).astype(np.int64)) > 0
    m["busy_ns"] = m["inclusive_ns"].copy()
    for key, mask in (("span_ns", launch), ("kernel_span_ns", kern)):
        pos = np.flatnonzero(mask)
        first = np.searchsorted(pos, starts, side="right")
        last = np.searchsorted(pos, ends, side="left") - 1
        has = first <= last
        span = np.zeros(len(starts), np.int64)
        span[has] = th.op_end[pos[last[has]]] - th.op_start[pos[first[has]]]
        sel = np.flatnonzero(mixed & has)
        if len(sel):
            group, op_start, op_end = _instance_ops(pos, first[sel], last[sel], th)
            span[sel] = np.maximum.reduceat(op_end, group) - np.minimum.reduceat(op_start, group)
            if key == "kernel_span_ns":
                m["busy_ns"][sel] = _union_lengths(group, op_start, op_end)
        m[key] = span
    child_sum = np.zeros(len(starts), np.int64)
    has_parent = parent >= 0
    np.add.at(child_sum, parent[has_parent], m["inclusive_ns"][has_parent])
    m["exclusive_ns"] = m["inclusive_ns"] - child_sum
    return arg[starts], starts, ends, m


def _instance_ops(pos, first, last, th):
    """The ops pos[first[i]..last[i]] of each selected instance, flattened: (group starts, starts, ends)."""
    counts = last - first + 1
    group = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    idx = np.repeat(first - group, counts) + np.arange(int(counts.sum()))
    return group, th.op_start[pos[idx]], th.op_end[pos[idx]]


def _union_lengths(group, start, end):
    """Length of the union of the intervals of each group (groups are consecutive runs starting at `group`)."""
    if len(group) == 0:
        return np.zeros(0, np.int64)
    label = np.zeros(len(start), np.int64)
    label[group[1:]] = 1
    label = np.cumsum(label)
    order = np.lexsort((start, label))
    start, end, label = start[order], end[order], label[order]
    big = int(end.max() - start.min()) + 1
    shifted_end = end - start.min() + label * big        # groups cannot reach into each other
    reach = np.maximum.accumulate(shifted_end)
    before = np.concatenate([[-1], reach[:-1]])
    before = np.where(np.concatenate([[True], label[1:] != label[:-1]]), -1, before)   # nothing before a group
    shifted_start = start - start.min() + label * big
    added = np.maximum(0, shifted_end - np.maximum(shifted_start, before))
    return np.bincount(label, weights=added).astype(np.int64)


TRUTH_KEYS = ["instances", "kernels", "inclusive_ns", "exclusive_ns", "gpu_ops", "gpu_op_ns", "busy_ns", "span_ns",
              "kernel_span_ns", "cpu_ns", "launches"]


def ground_truth(threads: list[Thread]) -> dict:
    totals = {r.name: dict.fromkeys(TRUTH_KEYS, 0) for r in RANGES}
    _, _, is_kernel, _ = op_table()
    attributed = 0
    for th in threads:
        kinds, _, _, m = range_truth(th)
        counts = np.bincount(kinds, minlength=len(RANGES))
        sums = {k: np.bincount(kinds, weights=v.astype(np.float64), minlength=len(RANGES)) for k, v in m.items()}
        for i, r in enumerate(RANGES):
            totals[r.name]["instances"] += int(counts[i])
            for k in m:
                totals[r.name][k] += int(round(sums[k][i]))
        starts, ends, parent = pair_ranges(th.code)
        top = parent < 0
        attributed += int(m["kernels"][top].sum())
    total_kernels = sum(int(np.count_nonzero((th.code == LAUNCH) & is_kernel[th.arg])) for th in threads)
    return {"ranges": {k: v for k, v in totals.items() if v["instances"]},
            "kernels": total_kernels, "unattributed_kernels": total_kernels - attributed}


# ---------------------------------------------------------------------------------------------------
# Writing the SQLite file.
def read_ddl(path: Path, names: list[str]) -> dict[str, str]:
    if not path.exists():
        raise GeneratorError(f"schema source {path} not found: pass --schema-from with a real nsys SQLite export")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = dict(con.execute("select name, sql from sqlite_master where type='table'").fetchall())
    con.close()
    return {n: rows[n] for n in names if n in rows}


def insert_columns(con, sql: str, columns: list, chunk: int = 250_000):
    """executemany over numpy columns, a chunk at a time (tuples of Python ints are ~60 B a value)."""
    n = len(columns[0])
    for lo in range(0, n, chunk):
        con.executemany(sql, zip(*(c[lo:lo + chunk].tolist() for c in columns)))


class Strings:
    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        return self.ids.setdefault(value, len(self.ids) + 1)


def write_export(out: Path, threads: list[Thread], processes: list[tuple[int, str]], schema_from: Path,
                 meta: dict[str, str]):
    ddl = read_ddl(schema_from, TABLES + COPIED_TABLES)
    missing = [t for t in TABLES if t not in ddl]
    if missing:
        raise GeneratorError(f"schema source {schema_from} lacks tables {missing}: use a 2025.x nsys export")
    memset_ddl = read_ddl(MEMSET_SCHEMA_SOURCE, ["CUPTI_ACTIVITY_KIND_MEMSET"]) if MEMSET_SCHEMA_SOURCE.exists() else {}
    ddl.update(memset_ddl)

    con = sqlite3.connect(out)
    con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-200000;")
    for sql in ddl.values():
        con.execute(sql)
    con.execute("ATTACH DATABASE ? AS src", (f"file:{schema_from}?mode=ro",))
    for name in COPIED_TABLES:
        if name in ddl:
            con.execute(f"INSERT INTO main.{name} SELECT * FROM src.{name}")
    con.executemany("INSERT INTO META_DATA_EXPORT(name, value) VALUES (?, ?)", meta.items())
    con.execute("INSERT INTO META_DATA_CAPTURE SELECT * FROM src.META_DATA_CAPTURE WHERE name NOT LIKE '%ENVIRONMENT%'")
    gpu_cols = [r[1] for r in con.execute("PRAGMA src.table_info(TARGET_INFO_GPU)")]
    for device in sorted({th.device for th in threads}):
        cols = ", ".join(str(device) if c == "id" else c for c in gpu_cols)
        con.execute(f"INSERT INTO TARGET_INFO_GPU SELECT {cols} FROM src.TARGET_INFO_GPU LIMIT 1")
    con.commit()
    con.execute("DETACH DATABASE src")

    s = Strings()
    kinds_text_ids = {i: s(r.text) for i, r in enumerate(RANGES) if not r.inline}
    api_ids = {k: s(v) for k, v in API_NAMES.items()}
    op_name_ids = [(s(o.demangled), s(o.short), s("_Z" + o.short)) for o in OPS]

    # Kernel templates in a temp table; per-kernel rows carry only what varies, the join adds the rest.
    con.execute("CREATE TEMP TABLE op_template(id INTEGER PRIMARY KEY, demangled, short, mangled, registers, "
                "gx, gy, gz, bx, by, bz, shared)")
    con.executemany("INSERT INTO op_template VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(i, *op_name_ids[i], o.registers, *o.grid, *o.block, o.shared) for i, o in enumerate(OPS)])

    _, driver, is_kernel, _ = op_table()
    kcols = {k: [] for k in ("start", "end", "device", "stream", "corr", "gpid", "op")}
    copies, runtime, nvtx = [], [], []
    for th in threads:
        launch = th.code == LAUNCH
        kern = launch & is_kernel[th.arg]
        for key, values in (("start", th.op_start[kern]), ("end", th.op_end[kern]), ("corr", th.correlation[kern]),
                            ("op", th.arg[kern])):
            kcols[key].append(values)
        nk = int(kern.sum())
        kcols["device"].append(np.full(nk, th.device))
        kcols["stream"].append(th.op_stream[kern])
        kcols["gpid"].append(np.full(nk, th.global_pid, np.int64))
        for i in np.flatnonzero(launch & ~is_kernel[th.arg]):
            copies.append((OPS[th.arg[i]], int(th.op_start[i]), int(th.op_end[i]), th, int(th.correlation[i])))
        # API calls
        calls = np.flatnonzero((th.code == LAUNCH) | (th.code == API))
        ops_of_calls = th.arg[calls]
        kinds = np.array([o.kind for o in OPS] + ["query"])[ops_of_calls]
        name_id = np.where(kinds == "memcpy", api_ids["memcpy"],
                  np.where(kinds == "memset", api_ids["memset"],
                  np.where(kinds == "query", api_ids["query"],
                  np.where(driver[ops_of_calls], api_ids["driver"], api_ids["runtime"]))))
        event_class = np.where((kinds == "kernel") & driver[ops_of_calls], 1, 0)
        runtime.append(np.stack([th.t[calls], th.api_end[calls], event_class,
                                 np.full(len(calls), th.global_tid, np.int64), th.correlation[calls], name_id]))
        # NVTX ranges and marks
        kinds_r, starts, ends, _ = range_truth(th)
        nvtx.append((th, kinds_r, th.t[starts], th.t[ends], th.payload[starts]))

    # GPU kernels: all threads, time order.
    cols = {k: np.concatenate(v) for k, v in kcols.items()}
    order = np.argsort(cols["start"], kind="stable")
    con.execute("CREATE TEMP TABLE k(start, end, device, stream, corr, gpid, op)")
    insert_columns(con, "INSERT INTO k VALUES (?,?,?,?,?,?,?)",
                   [cols[k][order] for k in ("start", "end", "device", "stream", "corr", "gpid", "op")])
    con.execute("""
        INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, contextId, greenContextId, streamId,
            correlationId, globalPid, demangledName, shortName, mangledName, launchType, cacheConfig,
            registersPerThread, gridX, gridY, gridZ, blockX, blockY, blockZ, staticSharedMemory,
            dynamicSharedMemory, localMemoryPerThread, localMemoryTotal, gridId, sharedMemoryExecuted,
            graphNodeId, sharedMemoryLimitConfig)
        SELECT k.start, k.end, k.device, 1, 0, k.stream, k.corr, k.gpid, t.demangled, t.short, t.mangled, 1, 0,
            t.registers, t.gx, t.gy, t.gz, t.bx, t.by, t.bz, 0, t.shared, 0, 0, k.rowid, t.shared + 1024, NULL, 1
        FROM k JOIN op_template AS t ON t.id = k.op ORDER BY k.rowid""")
    con.execute("DROP TABLE k")

    copies.sort(key=lambda c: c[1])
    con.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, end, deviceId, contextId, greenContextId, "
                    "streamId, correlationId, globalPid, bytes, copyKind, srcKind, dstKind, srcDeviceId, dstDeviceId) "
                    "VALUES (?,?,?,1,0,?,?,?,?,?,?,?,?,?)",
                    [(start, end, th.device, th.stream, corr, th.global_pid, o.bytes, o.copy_kind,
                      0 if o.copy_kind == 1 else 2, 2 if o.copy_kind == 1 else 1, th.device, th.device)
                     for o, start, end, th, corr in copies if o.kind == "memcpy"])
    if "CUPTI_ACTIVITY_KIND_MEMSET" in ddl:
        con.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_MEMSET (start, end, deviceId, contextId, greenContextId, "
                        "streamId, correlationId, globalPid, value, bytes, memKind) VALUES (?,?,?,1,0,?,?,?,0,?,2)",
                        [(start, end, th.device, th.stream, corr, th.global_pid, o.bytes)
                         for o, start, end, th, corr in copies if o.kind == "memset"])

    api = np.concatenate(runtime, axis=1)
    api = api[:, np.argsort(api[0], kind="stable")]
    insert_columns(con, "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, end, eventClass, globalTid, correlationId, "
                   "nameId, returnValue) VALUES (?,?,?,?,?,?,0)", list(api))

    # NVTX: a domain-create row per process, then ranges and marks of every thread, by start time.
    # -1 / '' stand for NULL (NULLIF in the INSERT).
    kind_type = np.array([r.event_type for r in RANGES])
    kind_color = np.array([255 if r.dsocr else -1 for r in RANGES])
    kind_text = np.array([r.text if r.inline else "" for r in RANGES], dtype=object)
    kind_text_id = np.array([kinds_text_ids.get(i, -1) for i in range(len(RANGES))])
    kind_domain = np.array([DSOCR_DOMAIN_ID if r.dsocr else 0 for r in RANGES])
    ev = {k: [] for k in ("start", "end", "type", "range_id", "color", "text", "gtid", "text_id", "domain", "payload")}

    def add_events(n, **cols):
        for k in ev:
            v = cols.get(k, -1)
            ev[k].append(v if isinstance(v, np.ndarray) else np.full(n, v, dtype=object if k == "text" else np.int64))

    for pid, _ in processes:
        add_events(1, start=-700_000_000 - pid, type=NVTX_DOMAIN_CREATE, text="dsocr",
                   gtid=VM_BITS | (pid << 24) | pid, domain=DSOCR_DOMAIN_ID)
    next_range_id = 1
    for th, kinds_r, starts, ends, payloads in nvtx:
        n = len(kinds_r)
        startend = kind_type[kinds_r] == NVTX_STARTEND
        range_ids = np.full(n, -1, np.int64)
        range_ids[startend] = next_range_id + np.arange(np.count_nonzero(startend))
        next_range_id += int(np.count_nonzero(startend))
        add_events(n, start=starts, end=ends, type=kind_type[kinds_r], range_id=range_ids, color=kind_color[kinds_r],
                   text=kind_text[kinds_r], gtid=th.global_tid, text_id=kind_text_id[kinds_r],
                   domain=kind_domain[kinds_r], payload=payloads)
        marks = th.t[th.code == MARK]
        add_events(len(marks), start=marks, type=NVTX_MARK, text="page_done", gtid=th.global_tid, domain=0)
    ev = {k: np.concatenate(v) for k, v in ev.items()}
    order = np.argsort(ev["start"], kind="stable")
    insert_columns(con, "INSERT INTO NVTX_EVENTS (start, end, eventType, rangeId, color, text, globalTid, textId, "
                   "domainId, int64Value) VALUES (?, NULLIF(?, -1), ?, NULLIF(?, -1), NULLIF(?, -1), NULLIF(?, ''), ?, "
                   "NULLIF(?, -1), ?, NULLIF(?, -1))", [ev[k][order] for k in ev])

    thread_names = [(s("python3" if th.tid == th.pid else "Thread-2 (prefetch)"), 20, th.global_tid) for th in threads]
    con.executemany("INSERT INTO ThreadNames VALUES (?,?,?)", thread_names)
    con.executemany("INSERT INTO PROCESSES (globalPid, pid, name) VALUES (?,?,?)",
                    [(VM_BITS | (pid << 24), pid, name) for pid, name in processes])
    con.executemany("INSERT INTO StringIds VALUES (?, ?)", [(i, v) for v, i in s.ids.items()])
    con.commit()
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
              ["CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_MEMCPY",
               "CUPTI_ACTIVITY_KIND_MEMSET", "NVTX_EVENTS", "StringIds"] if t in ddl}
    con.close()
    return counts


# ---------------------------------------------------------------------------------------------------
PROCESSES = [(4242, "python3"), (5353, "python3")]   # (pid, name); main thread tid = pid, worker = pid + 7


def build_threads(kernels: int, seed: int) -> list[Thread]:
    rng = np.random.default_rng(seed)
    threads = []
    shares = [0.7, 0.3]
    for proc_index, ((pid, _), share) in enumerate(zip(PROCESSES, shares)):
        budget = max(1, int(round(kernels * share * 0.98)))
        main = time_program(main_program(budget, rng), rng, t0=150_000_000 + 350_000_000 * proc_index,
                            pid=pid, tid=pid, device=proc_index, stream=7, first_correlation=1)
        duration = int(main.t[-1] - main.t[0])
        worker_kernels = max(2, int(round(kernels * share * 0.02)))
        blocks = max(1, worker_kernels // 3)
        worker = time_program(worker_program(blocks, duration / (2 * blocks)), rng, t0=int(main.t[0]) + 40_000,
                              pid=pid, tid=pid + 7, device=proc_index, stream=13,
                              first_correlation=int(main.correlation.max()) + 1)
        threads += [main, worker]
    return threads


def generate(kernels: int, out: Path, seed: int = 0, schema_from: Path = SCHEMA_SOURCE, force: bool = False) -> dict:
    """Write the export and OUT.truth.json; return the truth dict."""
    if kernels < 100:
        raise GeneratorError(f"--kernels {kernels} is too small: use at least 100")
    if not out.parent.is_dir():
        raise GeneratorError(f"{out.parent} is not a folder: create it or choose another --out")
    if not schema_from.exists():
        raise GeneratorError(f"schema source {schema_from} not found: pass --schema-from with a real nsys SQLite export")
    truth_path = out.with_name(out.name + ".truth.json")
    for path in (out, truth_path):
        if path.exists():
            if not force:
                raise GeneratorError(f"{path} exists: pass --force to overwrite")
            path.unlink()
    threads = build_threads(kernels, seed)
    truth = ground_truth(threads)
    meta = {"SYNTHETIC_GENERATOR": "dsocr-perf benchmarks/gen_synthetic.py",
            "SYNTHETIC_SEED": str(seed), "SYNTHETIC_KERNELS": str(truth["kernels"])}
    try:
        counts = write_export(out, threads, PROCESSES, schema_from, meta)
    except (sqlite3.Error, OSError) as e:
        out.unlink(missing_ok=True)
        raise GeneratorError(f"cannot write {out} ({e}): check the folder's permissions and free space") from None
    truth.update(generator_version=VERSION, seed=seed, requested_kernels=kernels, rows=counts, schema_from=str(schema_from),
                 semantics="NVIDIA launch-time: an op belongs to every range on the launching thread that encloses "
                           "its launch API call; names are 'dsocr:text' in domain dsocr, plain text otherwise")
    truth_path.write_text(json.dumps(truth, indent=1, sort_keys=True))
    return truth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=float, required=True, help="number of kernels, e.g. 1e6")
    ap.add_argument("--out", type=Path, required=True, help="the .sqlite to write (OUT.truth.json beside it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schema-from", type=Path, default=SCHEMA_SOURCE, help="a real nsys 2025.x SQLite export")
    ap.add_argument("--force", action="store_true", help="overwrite OUT and its truth file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        truth = generate(int(args.kernels), args.out, args.seed, args.schema_from, args.force)
    except GeneratorError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {truth['kernels']} kernels, {truth['rows']} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
