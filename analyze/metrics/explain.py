"""Where the measured and the analytic work part, and why: per kernel class, the padding model, SAM's traffic.

  * class split (kernel-replay runs): per stage and kernel class (analyze.metrics.categories: gemm, attention,
    elementwise, reduction, moe, ...) the kernels' measured totals beside the analytic FLOPs of that class: the
    attention core for `attention`, the rest of the stage's FLOPs (linear layers, convolutions, SAM's rel-pos
    products) for `gemm`, zero for the others (the model counts no FLOPs there). Decode is the profiled steps as
    they are, against the analytic work of those steps.
  * findings, one sentence each: decode's padding waste checked against analyze.metrics.padding; SAM's DRAM
    traffic beyond the model's, split by kernel class (copies: layout changes the model does not count); per
    stage, the classes where tensor FLOPs and the model part by more than PART_PCT.
"""
from __future__ import annotations

from dsocr_perf.analyze.metrics import padding
from dsocr_perf.analyze.metrics.measured import FIELDS, Measured, accumulate, ratio, row_values, run_fields, sum_or_none
from dsocr_perf.analyze.read.ncu import KERNEL
from dsocr_perf.dsocr import stages as S

CLASS_KEYS = ("stage", "kernel_class", *FIELDS, "dram_share_frac", "flops", "tensor_flops_ratio")
PART_PCT = 5.0          # a stage's tensor FLOPs and the model "part" beyond this
VISION_AND_PREFILL = (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL)


def class_split(m: Measured) -> list[dict]:
    """One row per (stage, kernel class) over the kernels the kernel-replay runs profiled."""
    runs = [r for r in m.runs if r.mode == KERNEL]
    merged: dict = {}
    for run in runs:
        fields = run_fields(run)
        mine: dict = {}
        for row in run.table.to_pylist():
            if row["stage"] is not None:
                key = (row["stage"], row["kernel_class"])
                accumulate(mine.setdefault(key, dict.fromkeys(fields, 0)), row_values(row, fields))
        for key, values in mine.items():
            into = merged.setdefault(key, {})
            for f, v in values.items():
                into.setdefault(f, v)            # the first run that has the key
    analytic = _class_flops(m)
    dram_by_stage: dict = {}
    for (stage, _), v in merged.items():
        dram = sum_or_none(v.get("dram_read_bytes"), v.get("dram_write_bytes"))
        if dram is not None:
            dram_by_stage[stage] = dram_by_stage.get(stage, 0) + dram
    order = {s: i for i, s in enumerate((*VISION_AND_PREFILL, S.DECODE_STEP))}
    out = []
    for (stage, cls), v in sorted(merged.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1] or "")):
        values = {f: v.get(f) for f in FIELDS}
        dram = sum_or_none(values["dram_read_bytes"], values["dram_write_bytes"])
        flops = analytic.get(stage, {}).get(cls, 0) if stage in analytic else None
        out.append({"stage": stage, "kernel_class": cls, **values,
                    "dram_share_frac": ratio(dram, dram_by_stage.get(stage)),
                    "flops": flops, "tensor_flops_ratio": ratio(values["tensor_flops"], flops)})
    return out


def _class_flops(m: Measured) -> dict:
    """stage -> {'gemm': F, 'attention': F} of the analytic work the kernel runs profiled."""
    a = m.analytic
    if a is None:
        return {}
    out = {}
    for stage in VISION_AND_PREFILL:
        if stage in a.costs:
            attention = a.attention.get(stage, 0)
            out[stage] = {"gemm": a.costs[stage].flops - attention, "attention": attention}
    lengths = [_kv(m, q, s) for q, s in profiled_steps(m)]
    if lengths and None not in lengths:
        total = sum(a.step(kv).flops for kv in lengths)
        attention = sum(a.step_attention(kv) for kv in lengths)
        out[S.DECODE_STEP] = {"gemm": total - attention, "attention": attention}
    return out


def profiled_steps(m: Measured) -> list[tuple]:
    """(request, step) of the decode steps the kernel-replay runs profiled."""
    steps = {(row["request"], row["step"]) for run in m.runs if run.mode == KERNEL
             for row in run.table.select(["stage", "request", "step"]).to_pylist() if row["stage"] == S.DECODE_STEP}
    return sorted(steps, key=lambda k: (k[0] or 0, k[1] or 0))


def _kv(m: Measured, request, step) -> int | None:
    lengths, axis = m.plan.xs(request)
    return lengths[step] if axis == "KV length" and step is not None and step < len(lengths) else None


# ------------------------------------------------------------------------------------------------ findings

def padding_check(m: Measured) -> dict | None:
    """The padding model's decode ratio against the measured one, over every step of the pages profiled."""
    decode = m.stages.get(S.DECODE)
    if m.analytic is None or decode is None or decode.values["tensor_flops"] is None:
        return None
    steps = []
    for request in m.requests or [None]:
        lengths, axis = m.plan.xs(request)
        if axis != "KV length":
            return None
        steps += [padding.decode_step(m.analytic.work.config.decoder, kv, m.analytic.work.policy) for kv in lengths]
    result = padding.check(steps, decode.values["tensor_flops"])
    result["measured_scaling"] = decode.scaling
    return result


def findings(m: Measured, classes: list[dict] | None = None, check: dict | None = None) -> list[str]:
    classes = class_split(m) if classes is None else classes
    check = padding_check(m) if check is None else check
    out = [padding.finding(check) if check else None, decode_classes(m, classes), sam_traffic(m, classes)]
    out += [parting(stage, m, classes) for stage in VISION_AND_PREFILL]
    return [f for f in out if f]


def sam_traffic(m: Measured, classes: list[dict]) -> str | None:
    """SAM's DRAM bytes against the model's, and which kernel classes move them."""
    sam = m.block(S.SAM)
    cost = m.analytic.costs.get(S.SAM) if m.analytic else None
    if sam is None or sam["dram_bytes_ratio"] is None or cost is None:
        return None
    measured = sam["dram_read_bytes"] + sam["dram_write_bytes"]
    text = (f"sam moves {sam['dram_bytes_ratio']:.2f}x the DRAM bytes of the model ({measured / 1e9:,.2f} GB "
            f"measured in {sam['mode']} replay, {cost.bytes / 1e9:,.2f} GB modelled)")
    mine = [c for c in classes if c["stage"] == S.SAM and c["dram_share_frac"] is not None]
    if not mine:
        return text + "; a kernel-replay CSV (`make ncu ARGS=--ncu-kernels`) splits it by kernel class"
    total = sum(_dram(c) for c in mine)
    top = sorted(mine, key=lambda c: -c["dram_share_frac"])[:3]
    split = ", ".join(f"{c['kernel_class']} {_dram(c) / 1e9:,.2f} GB ({100 * c['dram_share_frac']:.0f}%)" for c in top)
    text += f". Kernel by kernel: {total / 1e9:,.2f} GB ({total / cost.bytes:.2f}x): {split}"
    copies = _copy_bytes(m)
    if copies:
        text += (f"; copy kernels alone move {copies / 1e9:,.2f} GB: layout changes (permute/contiguous copies, the "
                 "expanded rel-pos bias) the model does not count")
    return text


def _dram(c: dict) -> int:
    return (c["dram_read_bytes"] or 0) + (c["dram_write_bytes"] or 0)


def _copy_bytes(m: Measured) -> int:
    """DRAM bytes of SAM's elementwise kernels that copy (ATen's direct_copy / *_copy_kernel), in the first
    kernel-replay run that counts DRAM bytes."""
    run = next((r for r in m.runs if r.mode == KERNEL and {"dram_read_bytes", "dram_write_bytes"} <= r.metrics), None)
    if run is None:
        return 0
    return sum((row["dram_read_bytes"] or 0) + (row["dram_write_bytes"] or 0) for row in run.table.to_pylist()
               if row["stage"] == S.SAM and row["kernel_class"] == "elementwise" and "copy" in row["kernel_name"].lower())


def decode_classes(m: Measured, classes: list[dict]) -> str | None:
    """The padding model per kernel class, on the decode steps a kernel-replay run profiled."""
    mine = {c["kernel_class"]: c for c in classes if c["stage"] == S.DECODE_STEP and c["tensor_flops_ratio"]}
    if "gemm" not in mine or "attention" not in mine:
        return None
    steps = profiled_steps(m)
    lengths = [_kv(m, q, s) for q, s in steps]
    if not lengths or None in lengths:
        return None
    block = padding.ATTENTION_KEY_BLOCK
    attention = padding.ATTENTION_QUERY_ROWS * sum(padding.padded(kv, block) for kv in lengths) / sum(lengths)
    shown = ", ".join(str(s) for _, s in steps[:8]) + (", ..." if len(steps) > 8 else "")
    return (f"decode by kernel class (kernel replay, step{'s' if len(steps) > 1 else ''} {shown}): GEMMs executed "
            f"{mine['gemm']['tensor_flops_ratio']:.2f}x their useful FLOPs (padding model {padding.GEMM_ROWS}x), "
            f"attention {mine['attention']['tensor_flops_ratio']:.2f}x (padding model {attention:.2f}x)")


def parting(stage: str, m: Measured, classes: list[dict]) -> str | None:
    """'clip executes 1.10x its useful tensor FLOPs: gemm 1.08x (521.2 -> 561.7 GFLOP), attention 1.93x (...)'."""
    block = m.block(stage)
    if block is None or block["tensor_flops_ratio"] is None or abs(block["tensor_flops_ratio"] - 1) * 100 <= PART_PCT:
        return None
    mine = [c for c in classes if c["stage"] == stage and c["flops"] and c["tensor_flops"] is not None]
    if not mine:
        return None
    parts = ", ".join(f"{c['kernel_class']} {c['tensor_flops_ratio']:.2f}x ({c['flops'] / 1e9:,.1f} -> "
                      f"{c['tensor_flops'] / 1e9:,.1f} GFLOP){_causal_hint(stage, c, m)}" for c in mine)
    return f"{stage} executes {block['tensor_flops_ratio']:.3f}x its useful tensor FLOPs: {parts}"


def _causal_hint(stage: str, c: dict, m: Measured) -> str:
    """The prompt's causal attention executes less than the full square the default policy counts."""
    full = m.analytic is not None and m.analytic.work.policy.value == "full"
    if stage == S.LLM_PREFILL and c["kernel_class"] == "attention" and c["tensor_flops_ratio"] < 1 and full:
        return (" (causal: the kernel skips masked key blocks, the model counts the full square; "
                "--attention-policy causal-half counts the visible half)")
    return ""
