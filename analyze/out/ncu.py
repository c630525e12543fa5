"""`dsocr-analyze ncu FILE.csv [FILE2.csv] [--json]`: Nsight Compute's counters without a trace.

Per stage the measured sums (a ranges CSV, a kernel-replay CSV, or both) beside the analytic work of the
workload in the sidecar NAME.ncu.json (measured only, with a note, without one); per decode step; in kernel replay
the split by kernel class where measured and analytic part; and the findings: decode's padding waste against the
padding model, SAM's DRAM traffic by kernel class. JSON: schema `dsocr-ncu-analysis/1`, keys as in `ncu_document`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dsocr_perf.analyze.out.table import ms, num, render
from dsocr_perf.dsocr import stages as S

if TYPE_CHECKING:    # the CLI imports this module at start: NumPy and Arrow come with the command, not before
    from dsocr_perf.analyze.metrics.measured import Measured

SCHEMA = "dsocr-ncu-analysis/1"
STAGE_ORDER = (S.PREFILL, S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL, S.DECODE)
IN_PREFILL = (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL)
STAGE_KEYS = ("stage", "parent", "ranges", "flops", "bytes", "measured")
EDGE_STEPS = 3            # the text shows the first and last steps, and the steps where attention padding grows


def register(cli, common) -> None:
    @cli.command("ncu")
    @click.argument("csv_paths", metavar="FILE.csv [FILE2.csv]", nargs=-1, required=True,
                    type=click.Path(path_type=common.Path))
    @click.option("--json", "as_json", is_flag=True, help=f"Print the analysis as JSON (schema {SCHEMA}).")
    @click.option("--attention-policy", type=click.Choice(["full", "causal-half"]), default=None,
                  help="How causal attention FLOPs are counted in the analytic numbers (default full).")
    def ncu_command(csv_paths, as_json, attention_policy):
        """Nsight Compute CSVs of a `make ncu` session (the ranges CSV, a kernel-replay CSV, or both; plain or .gz),
        without a trace: measured tensor FLOPs and DRAM bytes per stage and decode step beside the analytic work of
        the workload in NAME.ncu.json, the split by kernel class, and what explains the differences."""
        from dsocr_perf.analyze.metrics.measured import measure
        from dsocr_perf.analyze.out.measured import load

        runs, sidecar = load(csv_paths)
        m = measure(runs, sidecar, policy=attention_policy)
        common.warn(m)
        doc = ncu_document(m)
        if as_json:
            common.echo_json(doc)
            return
        common.echo(ncu_report(m, doc))


def ncu_document(m: Measured) -> dict:
    from dsocr_perf.analyze.metrics import explain
    from dsocr_perf.analyze.metrics.flops import workload_summary
    from dsocr_perf.analyze.out.document import clean

    classes = explain.class_split(m)
    check = explain.padding_check(m)
    sidecar = m.sidecar
    policy = m.analytic.work.policy.value if m.analytic else None
    return clean({
        "schema": SCHEMA,
        "inputs": [{"path": str(r.path), "mode": r.mode, "rows": r.rows, "metrics": sorted(r.metrics)} for r in m.runs],
        "sidecar": str(sidecar.path) if sidecar else None,
        "ncu_version": sidecar.version if sidecar else None,
        "gpu": sidecar.gpu if sidecar else None,
        "workload": workload_summary(m.manifest),
        "attention_policy": policy,
        "stages": stage_entries(m),
        "steps": [s | _predicted(m, s) for s in m.steps],
        "classes": classes,
        "padding": check,
        "findings": explain.findings(m, classes, check),
        "notes": m.notes,
        "warnings": m.warnings,
    })


def stage_entries(m: Measured) -> list[dict]:
    out = []
    for stage in STAGE_ORDER:
        sums = m.stages.get(stage)
        if sums is None:
            continue
        cost = m.analytic.costs.get(stage) if m.analytic else None
        out.append({"stage": stage, "parent": S.PREFILL if stage in IN_PREFILL else None,
                    "ranges": sums.ranges, "flops": cost.flops if cost else None,
                    "bytes": cost.bytes if cost else None, "measured": m.block(stage)})
    return out


def _predicted(m: Measured, step: dict) -> dict:
    """The padding model's executed tensor FLOPs of one step."""
    from dsocr_perf.analyze.metrics import padding

    if m.analytic is None or step["kv_length"] is None:
        return {"padding_model_flops": None, "padding_model_ratio": None}
    work = padding.decode_step(m.analytic.work.config.decoder, step["kv_length"], m.analytic.work.policy)
    return {"padding_model_flops": work.predicted_flops, "padding_model_ratio": work.predicted_flops / work.analytic_flops}


# ------------------------------------------------------------------------------------------------ text

def ncu_report(m: Measured, doc: dict) -> str:
    lines = [f"{r['path']}: {r['mode']} replay, {r['rows']:,} {'ranges' if r['mode'] == 'app-range' else 'kernels'}"
             for r in doc["inputs"]]
    lines.append(workload_line(doc, m))
    lines += ["", stage_table(doc["stages"])]
    if doc["steps"]:
        lines += ["", step_table(doc["steps"])]
    if doc["classes"]:
        lines += ["", class_table(doc["classes"])]
    elif doc["stages"]:
        lines += ["", "by kernel class: needs a kernel-replay CSV (`make ncu ARGS=--ncu-kernels`, NAME.ncu-kernels.csv)"]
    if doc["findings"]:
        lines += ["", "findings"] + [f"{i}. {text}" for i, text in enumerate(doc["findings"], 1)]
    lines += ["", "tensor = sm__ops_path_tensor_src_bf16_dst_fp32.sum, the bf16 tensor FLOPs executed (padding included); "
              "DRAM = dram__bytes_read/write.sum, caches flushed\nbefore each range or kernel (an upper bound); model = "
              "dsocr/flops.py for the workload profiled (useful work; attention counted: "
              f"{doc['attention_policy'] or '-'}); ratio = measured / model."]
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def workload_line(doc: dict, m: Measured) -> str:
    w = doc["workload"]
    if not w:
        return "workload: unknown (no NAME.ncu.json beside the CSV): measured numbers only"
    grid = "x".join(map(str, w["tile_grid"])) + " tiles, " if w.get("tile_grid") else ""
    kv = m.plan.kv.get(None) or next(iter(m.plan.kv.values()), [])
    n = w["generated_tokens"]
    span = (f" (KV {kv[0]:,}-{kv[-1]:,})" if len(kv) > 1 else f" (KV {kv[0]:,})") if kv else ""
    steps = f", {n:,} decode step{'s' if n != 1 else ''}{span}"
    where = f" (from {m.manifest_source})" if m.manifest_source else ""
    tool = f"; ncu {doc['ncu_version']}" if doc["ncu_version"] else ""
    gpu = f" on {doc['gpu']}" if doc["gpu"] else ""
    return f"workload{where}: {w['mode']}, {grid}{w['prompt_tokens']:,} prompt tokens{steps}{tool}{gpu}"


def _dram(block: dict):
    if block["dram_read_bytes"] is None or block["dram_write_bytes"] is None:
        return None
    return block["dram_read_bytes"] + block["dram_write_bytes"]


def stage_table(stages: list[dict]) -> str:
    cells = []
    for e in stages:
        b = e["measured"]
        cells.append([("  " if e["parent"] else "") + e["stage"], _count(e["ranges"]), _count(b["kernels"]),
                      num(b["tensor_flops"], ",.1f", 1e9), num(e["flops"], ",.1f", 1e9),
                      num(b["tensor_flops_ratio"], ".3f"), num(b["dram_read_bytes"], ",.2f", 1e9),
                      num(b["dram_write_bytes"], ",.2f", 1e9), num(e["bytes"], ",.2f", 1e9),
                      num(b["dram_bytes_ratio"], ".3f")])
    table = render_filled(["stage", "ranges", "kernels", "tensor GFLOP", "model GFLOP", "ratio", "DRAM read GB",
                           "DRAM write GB", "model GB", "ratio"], cells, "l" + "r" * 9)
    scaled = next((e["measured"]["scaling"] for e in stages if e["measured"]["scaling"]), None)
    return table + (f"\n{scaled}" if scaled else "")


def _count(value) -> str:
    return "" if value is None else f"{value:,}"


def shown_steps(steps: list[dict]) -> list[int]:
    """Positions of the steps the text shows: the first and last EDGE_STEPS, and each pair of steps where the
    attention's padded key blocks grow."""
    from dsocr_perf.analyze.metrics import padding

    if len(steps) <= 2 * EDGE_STEPS + 4:
        return list(range(len(steps)))
    keep = set(range(EDGE_STEPS)) | set(range(len(steps) - EDGE_STEPS, len(steps)))
    for i in range(1, len(steps)):
        a, b = steps[i - 1]["kv_length"], steps[i]["kv_length"]
        if a is not None and b is not None and \
                padding.padded(a, padding.ATTENTION_KEY_BLOCK) != padding.padded(b, padding.ATTENTION_KEY_BLOCK):
            keep |= {i - 1, i}
    return sorted(keep)


def step_table(steps: list[dict]) -> str:
    shown = shown_steps(steps)
    cells, last = [], None
    for at in shown:
        s = steps[at]
        if last is not None and at != last + 1:
            cells.append(["..."] + [""] * 9)
        last = at
        cells.append([_count(s["step"]), _count(s["kv_length"]), num(s["tensor_flops"], ",.3f", 1e9),
                      num(s["flops"], ",.3f", 1e9), num(s["tensor_flops_ratio"], ".2f"),
                      num(s["padding_model_ratio"], ".2f"), num(_dram(s), ",.3f", 1e9), num(s["bytes"], ",.3f", 1e9),
                      num(s["dram_bytes_ratio"], ".3f"), _count(s["kernels"])])
    title = f"decode steps ({len(steps):,} profiled" + ("; every step in --json)" if len(shown) < len(steps) else ")")
    return title + "\n" + render_filled(["step", "KV", "tensor GFLOP", "model GFLOP", "ratio", "padding model",
                                         "DRAM GB", "model GB", "ratio", "kernels"], cells, "r" * 10)


def render_filled(headers: list[str], cells: list[list[str]], align: str) -> str:
    """render() without the columns no row fills (kernel counts of a ranges run, ranges of a kernel run)."""
    keep = [i for i in range(len(headers)) if any(row[i] not in ("", "-") for row in cells)] or list(range(len(headers)))
    return render([headers[i] for i in keep], [[row[i] for i in keep] for row in cells], "".join(align[i] for i in keep))


def class_table(classes: list[dict]) -> str:
    cells = [[c["stage"], c["kernel_class"] or "-", _count(c["kernels"]), ms(c["kernel_ns"]),
              num(c["tensor_flops"], ",.1f", 1e9), num(c["flops"], ",.1f", 1e9) if c["flops"] else "",
              num(c["tensor_flops_ratio"], ".3f"), num(_dram(c), ",.2f", 1e9), num(c["dram_share_frac"], ".0%"),
              num(c["l2_bytes"], ",.2f", 1e9)] for c in classes]
    return ("by kernel class (kernel replay, caches flushed before each kernel: a kernel's writes still in L2 when it "
            "ends are not counted;\ndecode: the profiled steps; ms: kernel time under ncu)\n"
            + render(["stage", "class", "kernels", "ms", "tensor GFLOP", "model GFLOP", "ratio", "DRAM GB",
                      "DRAM %", "L2 GB"], cells, "ll" + "r" * 8))


def measured_table(rows: list[dict]) -> str:
    """The compact text table of the stage report: measured beside analytic, per stage with a `measured` block."""
    shown = [r for r in rows if r.get("measured")]
    cells = []
    for r in shown:
        m = r["measured"]
        dram = None if m["dram_read_bytes"] is None or m["dram_write_bytes"] is None else \
            m["dram_read_bytes"] + m["dram_write_bytes"]
        cells.append([("  " if r.get("parent") else "") + r["name"], m["mode"], num(m["tensor_flops"], ",.1f", 1e9),
                      num(r.get("flops"), ",.1f", 1e9), num(m["tensor_flops_ratio"], ".3f"),
                      num(m["mfu_issued_busy_pct"], ".2f"), num(r.get("mfu_busy_pct"), ".2f"),
                      num(dram, ",.2f", 1e9), num(r.get("bytes"), ",.2f", 1e9), num(m["dram_bytes_ratio"], ".3f")])
    legend = ("tensor = bf16 tensor FLOPs the hardware executed (padding included), DRAM = bytes read + written with "
              "caches flushed before each range or kernel (an upper bound); ratio = measured / model; MFU issued = "
              "tensor FLOPs over busy time, beside the model's useful-work MFU busy.")
    return ("measured by Nsight Compute beside the model\n"
            + render(["stage", "mode", "tensor GFLOP", "model GFLOP", "ratio", "MFU issued %", "MFU busy %", "DRAM GB",
                      "model GB", "ratio"], cells, "ll" + "r" * 8) + "\n\n" + legend)
