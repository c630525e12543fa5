"""Synthetic Nsight Compute CSVs in the real format of `ncu --import R --csv --page raw --print-units base`:
every cell quoted, a units row under the header (empty first cell), numbers with thousands separators, the NVTX
stack in `thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg`, `Kernel Name` = `range` in
application-range replay. The sums a test expects are known by construction."""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

NVTX = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
LEAD = ["ID", "Process ID", "Process Name", "Host Name", NVTX,
        "Id:Domain:Start/Stop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg", "Kernel Name", "Context", "Stream",
        "Device", "CC"]
METRICS = {  # our column -> (ncu metric, base unit)
    "gpu_time_ns": ("gpu__time_duration", "ns"),
    "tensor_flops": ("sm__ops_path_tensor_src_bf16_dst_fp32", ""),
    "dram_read_bytes": ("dram__bytes_read", "byte"),
    "dram_write_bytes": ("dram__bytes_write", "byte"),
    "l2_bytes": ("lts__t_bytes", "byte"),
}
SIMT = {op: (f"smsp__sass_thread_inst_executed_op_{op}_pred_on", "inst")
        for op in ("ffma", "fadd", "fmul", "hfma", "hadd", "hmul")}
PARENT = {"sam": "prefill", "clip": "prefill", "projector": "prefill", "llm_prefill": "prefill",
          "decode_step": "decode"}


def stack(stage: str, request: int = 0, step: int | None = None, pid: int = 4161) -> str:
    """The NVTX stack cell of a row inside `stage` (decode_step: payload = step)."""
    def entry(name, payload=None):
        kind, value = ("Int64", str(payload)) if payload is not None else ("none", "none")
        return f'"dsocr:{name}:{kind}:{value}:RGB:0xff:REGISTERED:{name}"'
    parts = [entry("request", request), entry(PARENT[stage]), entry(stage, step if stage == "decode_step" else None)]
    return f"{pid}  " + "  ".join(parts) + " "


def sep(value) -> str:
    """1225591296 -> '1,225,591,296' (ncu's thousands separators)."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def write(path: Path, rows: list[dict], *, metrics=("gpu_time_ns", "tensor_flops", "dram_read_bytes",
                                                      "dram_write_bytes"), simt: bool = False, units: dict | None = None,
          gz: bool = False) -> Path:
    """rows: dicts with stage, request, step, kernel (None: app-range 'range'), and a value per metric (base units;
    with `units`, our column -> (unit, factor): the value written is value / factor in that unit)."""
    units = units or {}
    header, unit_row = list(LEAD), [""] * len(LEAD)
    columns = [(key,) + METRICS[key] for key in metrics] + ([(f"simt_{op}",) + SIMT[op] for op in SIMT] if simt else [])
    for key, metric, unit in columns:
        for agg in ("avg", "max", "min", "sum"):
            header.append(f"{metric}.{agg}")
            unit_row.append(units.get(key, (unit, 1))[0])
    lines = [header, unit_row]
    for i, r in enumerate(rows):
        kernel = r.get("kernel")
        line = [str(i), "4161", "python3.12", "127.0.0.1", stack(r["stage"], r.get("request", 0), r.get("step")), "",
                kernel or "range", "1", "n/a" if kernel is None else "7", "0", "9.0"]
        for key, _, _ in columns:
            value = r.get(key, 0)
            unit, factor = units.get(key, (None, 1))
            shown = value / factor if factor != 1 else value
            # .avg over the sub-units is a decimal, .sum the total
            line += [sep(shown / 4 if isinstance(shown, int) else shown / 4), sep(shown), sep(0), sep(shown)]
        lines.append(line)
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(lines)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
