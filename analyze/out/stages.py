"""`dsocr-analyze TRACE` (the stage table, text or `--json`) and `dsocr-analyze kernels TRACE`."""
from __future__ import annotations

from types import SimpleNamespace

import click

from dsocr_perf.analyze.errors import TraceError, UsageError
from dsocr_perf.analyze.out.table import middle, ms, num, pct, render, step_names

CAUSE_HEADERS = (("host", "host"), ("launch", "launch"), ("sync", "sync"), ("memcpy", "memcpy"),
                 ("other_api", "other API"), ("gpu_other", "GPU other"))


def register(cli, common) -> None:
    @cli.command("stages")
    @common.trace_argument
    @click.option("--ranges", "which", type=click.Choice(["stages", "all"]), default="stages", show_default=True,
                  help="stages: the DeepSeek-OCR stages when present, else the top-level ranges; all: every range name.")
    @click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON (schema dsocr-analysis/1).")
    @click.option("--peak-tflops", type=common.positive_number,
                  help="Override the GPU's dense bf16 peak (TFLOP/s) used for MFU.")
    @click.option("--peak-gbs", type=common.positive_number,
                  help="Override the GPU's memory bandwidth (GB/s) used for MBU.")
    @click.option("--attention-policy", type=click.Choice(["full", "causal-half"]), default=None,
                  help="How causal attention FLOPs are counted (default full: as torch's flop counter does).")
    @click.option("--roofline", "roofline_stem", type=click.Path(path_type=common.Path),
                  help="Also write a roofline plot, one point per stage: STEM.png and STEM.svg.")
    @click.option("--ncu", "ncu_paths", multiple=True, type=click.Path(path_type=common.Path), metavar="FILE.csv",
                  help="Nsight Compute CSV of the same session (repeatable: the ranges CSV and a kernel-replay CSV); "
                       "default: NAME.ncu.csv, NAME.ncu-kernels.csv, NAME.ncu-simt.csv (or .gz) beside the trace.")
    @click.option("--no-ncu", is_flag=True, help="Leave out the Nsight Compute CSVs found beside the trace.")
    @common.force_option
    @common.no_cache_option
    def stages_command(trace_path, which, as_json, peak_tflops, peak_gbs, attention_policy, roofline_stem, ncu_paths,
                       no_ncu, force, no_cache):
        """Per-stage GPU time of TRACE (the default command): attribution, where the wall time goes, FLOPs,
        MFU and MBU over busy and wall time, the limiter of each stage, and the top opportunities; with Nsight
        Compute CSVs, the hardware-counted FLOPs and bytes beside the model's."""
        from dsocr_perf.analyze.out.document import document
        from dsocr_perf.analyze.out.measured import for_trace

        trace = common.open(trace_path, no_cache, quiet=True, keep=False)
        ncu = for_trace(trace_path, ncu_paths, no_ncu) if ncu_paths or no_ncu else None   # None: found beside
        if not trace.totals.gpu_ops:
            raise TraceError(f"{trace_path} has no GPU kernels, memcpys or memsets: nothing to attribute; capture "
                             "with CUDA tracing on (`nsys profile --trace=cuda,nvtx`)")
        if not as_json:
            common.warn(trace)
        doc = document(trace, which, peak_tflops=peak_tflops, peak_gbs=peak_gbs, policy=attention_policy, ncu=ncu)
        if not as_json:   # the measured block's own warnings (a bad CSV beside the trace, n/a rows)
            common.warn(SimpleNamespace(warnings=doc["warnings"]))
        if roofline_stem is not None:
            from dsocr_perf.analyze.out.roofline import plot_roofline

            written = plot_roofline(doc["ranges"], doc["gpu"], roofline_stem, title=str(trace_path), force=force,
                                    inputs=(trace.path,))
            click.echo(f"wrote {', '.join(map(str, written))}", err=True)
        if as_json:
            common.echo_json(doc)
            return
        common.echo(stage_report(trace, doc))

    @cli.command("kernels")
    @common.trace_argument
    @click.option("--range", "range_name", metavar="NAME",
                  help="Only GPU ops launched inside ranges of this name (exact: prefill or dsocr:prefill).")
    @click.option("--top", default=20, show_default=True, type=click.IntRange(min=1),
                  help="Number of kernel groups to show.")
    @click.option("--by", type=click.Choice(["name", "label"]), default="name", show_default=True,
                  help="name: one row per full kernel name, shown by its label (the functor of ATen elementwise "
                       "kernels, names cut in the middle); label: rows merged by label.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
    @common.no_cache_option
    def kernels_command(trace_path, range_name, top, by, as_json, no_cache):
        """GPU operations of TRACE grouped by kernel, by total time."""
        trace = common.open(trace_path, no_cache, quiet=as_json)
        rows = kernel_rows(trace, range_name, top, by)
        if as_json:
            keys = ("name", "label", "kind", "category", "instances", "total_ns", "avg_ns")
            common.echo_json([{k: r[k] for k in keys} for r in rows])
            return
        cells = [[r["label"], r["kind"], r["category"], f"{r['instances']:,}", ms(r["total_ns"]),
                  pct(r["total_ns"], r["all_ns"]), f"{r['avg_ns'] / 1e3:,.1f}"] for r in rows]
        common.echo(render(["kernel", "kind", "category", "n", "total ms", "%", "avg us"], cells, "lllrrrr",
                           max_width=90))


# ------------------------------------------------------------------------------------- the report

def stage_report(trace, doc: dict) -> str:
    t = doc["totals"]
    version = f" {trace.version}" if trace.version else ""
    gpu = f", {trace.gpu.name}" if trace.gpu.name else ""
    lines = [f"{trace.path} ({trace.source}{version}{gpu})",
             f"GPU kernel time {ms(t['kernel_ns'])} ms in {t['kernels']:,} kernels; "
             f"{pct(t['attributed_ns'], t['kernel_ns']) or '0%'} inside ranges", ""]
    rows = doc["ranges"]
    if not rows:
        lines += ["No ranges: the kernels by total time:", "", render_kernels(kernel_rows(trace, None, 15, "label"))]
        return "\n".join(lines)
    lines += [attribution_table(rows, t["kernel_ns"]), "", accounting_table(rows)]
    modelled = [r for r in rows if r["flops"] is not None or r["bytes"] is not None]
    if modelled or doc["notes"]:
        lines += ["", efficiency_table(modelled, doc)]
    sampled = [r for r in rows if r.get("sm_active_wall_pct") is not None]
    if sampled:
        lines += ["", metrics_table(sampled)]
    steps = doc["step_summary"]
    if steps["steps"]:
        lines += ["", step_line(steps)]
    if doc["opportunities"]:
        lines += ["", "top opportunities (measured; each fix assumed alone, then with those above it)"]
        lines += [opportunity_line(o) for o in doc["opportunities"]]
    return "\n".join(lines)


def _label(r: dict) -> str:
    return ("  " if r["parent"] else "") + r["name"]


def attribution_table(rows: list[dict], total: int) -> str:
    headers = ["range", "n", "GPU ms", "GPU %", "excl ms", "excl %", "busy ms", "span ms", "wall ms", "kernels",
               "launches"]
    cells = [[_label(r), f"{r['instances']:,}", ms(r["inclusive_ns"]), pct(r["inclusive_ns"], total),
              ms(r["exclusive_ns"]), pct(r["exclusive_ns"], total), ms(r["busy_ns"]), ms(r["span_ns"]),
              ms(r["wall_ns"]), f"{r['kernels']:,}", f"{r['launches']:,}"] for r in rows]
    legend = ("GPU = kernel time launched inside the range (nested ranges included, like nsys nvtx_kern_sum); "
              "excl = only where it is the innermost range;\nbusy = union of those kernels' intervals; span = first "
              "kernel start to last kernel end; wall = the range's own duration; % of all kernel time in the trace.")
    return render(headers, cells, "l" + "r" * (len(headers) - 1)) + "\n\n" + legend


def accounting_table(rows: list[dict]) -> str:
    headers = ["stage", "wall ms", "busy ms", "idle %"] + [h + " ms" for _, h in CAUSE_HEADERS] + \
        ["launches", "syncs", "DtoH", "bound"]
    cells = []
    for r in rows:
        causes = r["idle_causes_ns"]
        cells.append([_label(r), ms(r["wall_ns"]), ms(r["busy_ns"]), num(r["idle_frac"], ".1%")]
                     + [ms(causes[k]) for k, _ in CAUSE_HEADERS]
                     + [f"{r['kernel_launches']:,}", f"{r['host_syncs']:,}", f"{r['memcpy']['DtoH']:,}",
                        r["bound"] or "-"])
    legend = ("idle = wall - busy: the wall time the range's own kernels did not fill, split by what happened "
              "meanwhile: host = its thread's CPU work outside CUDA, launch/sync/memcpy/other API = inside those CUDA "
              "calls with the GPU idle, GPU other = the GPU ran other work. launches = kernel launch calls, syncs = "
              "synchronising calls, DtoH = device-to-host copies. bound: host, launch (the GPU idles most of the wall "
              "time), compute, memory (busy, at >= 50% of the roof), latency (busy, below it).")
    return "where the wall time goes\n" + render(headers, cells, "l" + "r" * (len(headers) - 2) + "l") + \
        "\n\n" + legend


def efficiency_table(modelled: list[dict], doc: dict) -> str:
    lines = []
    if modelled:
        cells = [[_label(r), ms(r["busy_ns"]), num(r["flops"], ",.1f", 1e9), num(r["tflop_per_s_busy"], ",.1f"),
                  num(r["mfu_busy_pct"], ".1f"), num(r["mfu_wall_pct"], ".2f"), num(r["bytes"], ",.2f", 1e9),
                  num(r["gb_per_s_busy"], ",.0f"), num(r["mbu_busy_pct"], ".1f"), num(r["mbu_wall_pct"], ".2f"),
                  num(r["intensity_flop_per_byte"], ",.1f"), num(r["roof_busy_pct"], ".1f")] for r in modelled]
        lines.append(render(["stage", "busy ms", "GFLOP", "TFLOP/s", "MFU busy %", "MFU wall %", "GB", "GB/s",
                             "MBU busy %", "MBU wall %", "FLOP/B", "roof %"], cells, "l" + "r" * 11))
        gpu = doc["gpu"]
        lines.append(f"\n{gpu.get('name') or 'unknown GPU'}: peak {num(gpu.get('peak_tflops'), ',.1f')} TFLOP/s "
                     f"({gpu.get('dtype') or 'bf16'} dense), {num(gpu.get('peak_gbs'), ',.0f')} GB/s; FLOPs/bytes from "
                     f"the manifest's workload (attention counted: {doc['attention_policy']}); busy = while the stage's "
                     "kernels run, wall = over its wall time; roof % = achieved / min(peak, bandwidth x intensity).")
        model = doc.get("model_level")
        if model:
            lines.append(f"model (prefill + decode): {model['flops'] / 1e9:,.1f} GFLOP in {model['busy_ns'] / 1e6:,.3f} "
                         f"ms busy, {model['wall_ns'] / 1e6:,.3f} ms wall: MFU {num(model['mfu_busy_pct'], '.1f')} % "
                         f"busy, {num(model['mfu_wall_pct'], '.2f')} % wall; MBU {num(model['mbu_busy_pct'], '.1f')} % "
                         f"busy, {num(model['mbu_wall_pct'], '.2f')} % wall")
    if any(r.get("measured") for r in doc["ranges"]):
        from dsocr_perf.analyze.out.ncu import measured_table

        lines += ["", measured_table(doc["ranges"]), ""]
    lines += [f"note: {m}" for m in doc["notes"]]
    return "\n".join(lines)


def metrics_table(rows: list[dict]) -> str:
    """Nsight Systems' sampled GPU metrics beside the analytic utilisation, both over wall time."""
    cells = [[_label(r), num(r["sm_active_wall_pct"], ".1f"), num(r["tensor_active_wall_pct"], ".1f"),
              num(r["mfu_wall_pct"], ".2f"), num(r["dram_read_wall_pct"], ".1f"), num(r["dram_write_wall_pct"], ".1f"),
              num(r["mbu_wall_pct"], ".2f")] for r in rows]
    return ("measured by the GPU (nsys GPU metrics samples, averaged over each stage's wall time) beside the model\n"
            + render(["stage", "SMs active %", "tensor active %", "MFU wall %", "DRAM read %", "DRAM write %",
                      "MBU wall %"], cells, "l" + "r" * 6))


def step_line(s: dict) -> str:
    text = (f"decode steps: {s['steps']:,}, wall median {ms(s['median_wall_ns'])} ms (mean {ms(s['mean_wall_ns'])}, "
            f"p90 {ms(s['p90_wall_ns'])}), GPU busy median {ms(s['median_busy_ns'])} ms per step")
    shift = s["level_shift"]
    if shift:
        text += (f"; level shift at step {shift['at_step']}: {ms(shift['before_mean_ns'])} ms before, "
                 f"{ms(shift['after_mean_ns'])} ms after")
    if s["slow_steps"]:
        shown = ", ".join(step_names(s)[:8]) + (", ..." if len(s["slow_steps"]) > 8 else "")
        text += f"; {len(s['slow_steps'])} steps above 1.5x the median ({shown})"
    if s["tokens_per_s_under_tracing"]:
        text += f"; {s['tokens_per_s_under_tracing']:,.1f} tokens/s (measured under tracing)"
    return text


def rate(value) -> str:
    """A throughput with three significant digits at least: 0.231, 32.7, 2,247.2."""
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def opportunity_line(o: dict) -> str:
    gain = ""
    if o["before_per_s"] is not None:
        gain = (f"; {rate(o['before_per_s'])} -> {rate(o['after_per_s'])} {o['unit']}"
                + (f" ({rate(o['after_with_above_per_s'])} with the above)" if o["rank"] > 1 else ""))
    evidence = o["evidence"]
    if o["kind"] in ("gpu_idle", "host_overlap"):
        causes = evidence["idle_causes_ns"]
        total = sum(causes.values()) or 1
        top = sorted(causes.items(), key=lambda kv: -kv[1])[:2]
        why = (f"per {evidence['per']}: {evidence['kernel_launches_per']:,.0f} launches, "
               f"{evidence['host_syncs_per']:,.0f} syncs, {evidence['memcpy_DtoH_per']:,.0f} DtoH copies; idle "
               + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top))
    else:
        why = (f"MBU {num(evidence['mbu_busy_pct'], '.1f')}%, MFU {num(evidence['mfu_busy_pct'], '.1f')}% while busy, "
               f"{num(evidence['intensity_flop_per_byte'], ',.1f')} FLOP/B")
    return (f"{o['rank']}. {o['title']}: recover {ms(o['recoverable_ns'])} ms{gain}\n"
            f"   evidence: {why}; query: dsocr-analyze sql TRACE -f {o['query']}")


# ---------------------------------------------------------------------------------------- kernels

def kernel_rows(trace, range_name: str | None, top: int, by: str = "label") -> list[dict]:
    """Kernel groups by total time (inclusive of nested ranges when `range_name` is given)."""
    import numpy as np
    import pyarrow as pa

    kernels = trace.table("kernels")
    if range_name is not None:
        names = trace.range_names()
        matching = [n for n in names if n == range_name or n.split(":", 1)[-1] == range_name and ":" in n]
        if not matching:
            raise UsageError(f"no range named {range_name!r} in {trace.path}; list them with "
                             f"`dsocr-analyze {trace.path} --ranges all`")
        op_ids = _ops_in_ranges(trace, matching)
        kernels = kernels.take(pa.array(op_ids))
    names = kernels.column("name")
    if isinstance(names, pa.ChunkedArray):
        names = names.combine_chunks()
    if not pa.types.is_dictionary(names.type):
        names = names.cast(pa.string()).dictionary_encode()
    values = names.dictionary.to_pylist()
    short = kernels.column("short_name").combine_chunks() if kernels.num_rows else None
    short_of = {}
    if short is not None and pa.types.is_dictionary(short.type):
        codes = names.indices.to_numpy(zero_copy_only=False)
        s_codes = short.indices.to_numpy(zero_copy_only=False)
        first = np.unique(codes, return_index=True)
        for code, at in zip(*first):
            short_of[int(code)] = short.dictionary[int(s_codes[at])].as_py()
    labels = [kernel_label(v or "", short_of.get(i)) for i, v in enumerate(values)]
    keys = labels if by == "label" else [v or "" for v in values]
    codes = names.indices.to_numpy(zero_copy_only=False) if kernels.num_rows else np.zeros(0, np.int64)
    key_values, key_of = np.unique(np.array(keys + [""], dtype=object), return_inverse=True)
    per_row = key_of[:-1][codes] if codes.size else codes
    label_of_key = {k: lab for k, lab in zip(keys, labels)}
    kind = kernels.column("kind").cast(pa.string()).to_numpy(zero_copy_only=False)
    category = kernels.column("category").cast(pa.string()).to_numpy(zero_copy_only=False)
    dur = kernels.column("dur_ns").to_numpy()
    groups: dict = {}
    for i in range(per_row.size):
        key = (int(per_row[i]), kind[i], category[i])
        g = groups.setdefault(key, [0, 0])
        g[0] += 1
        g[1] += int(dur[i])
    all_ns = int(dur.sum())
    rows = [{"name": str(key_values[k[0]]), "label": label_of_key.get(str(key_values[k[0]]), str(key_values[k[0]])),
             "kind": k[1], "category": k[2], "instances": n, "total_ns": t, "avg_ns": t // n, "all_ns": all_ns}
            for k, (n, t) in groups.items()]
    rows.sort(key=lambda r: (-r["total_ns"], r["name"]))
    return rows[:top]


def _ops_in_ranges(trace, names: list[str]):
    """Op ids launched inside any range with one of `names` (its subtree, and start/end containment)."""
    import numpy as np

    ranges = trace.table("ranges")
    name_values = ranges.column("name").to_pylist()
    wanted = set(names)
    ids = {i for i, n in enumerate(name_values) if n in wanted}
    ancestors = trace.table("_range_ancestors")
    a_range, a_anc = ancestors.column("range_id").to_numpy(), ancestors.column("ancestor_id").to_numpy()
    id_array = np.array(sorted(ids), np.int64)
    inside = set(a_range[np.isin(a_anc, id_array)].tolist())
    lane = trace.table("_op_lane_inner")
    ops = lane.column("op_id").to_numpy()[np.isin(lane.column("range_id").to_numpy(), np.array(sorted(inside), np.int64))]
    se = trace.table("_op_startend")
    ops2 = se.column("op_id").to_numpy()[np.isin(se.column("range_id").to_numpy(), id_array)]
    return np.unique(np.concatenate([ops, ops2]))


WRAPPERS = ("gpu_kernel_impl", "gpu_kernel_impl_nocast", "gpu_index_kernel", "index_kernel_impl", "launch_kernel",
            "launch_vectorized_kernel", "launch_unrolled_kernel", "launch_legacy_kernel")
FUNCTOR_HINTS = ("Functor", "_kernel_cuda", "KernelImpl", "_cuda_out", "_impl", "_cuda", "Op")


def kernel_label(name: str, short_name: str | None) -> str:
    """What tells kernels apart, cut in the middle if long: the base name, plus for template kernels
    the functor they run with its element type (ATen's elementwise kernels share one base name:
    `elementwise_kernel [CUDAFunctor_add<BFloat16>]` vs `elementwise_kernel [direct_copy_kernel_cuda]`)."""
    import re

    base = short_name if short_name and not re.search(r"[<(]", short_name) else _base_name(name)
    args = name.split("<", 1)[1] if "<" in name else ""
    words = [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z_]\w*", args)]
    words = [(at, w) for at, w in words if w not in WRAPPERS and w != base and w not in ("void", "at", "native", "c10",
                                                                                         "std", "int", "long")]
    pick = next(((at, w) for at, w in words if any(h in w for h in FUNCTOR_HINTS)), None)
    if pick is None:
        return middle(base, 100)
    at, functor = pick
    rest = args[at + len(functor):]
    typed = re.match(r"<([\w:, ]{1,40})>", rest)
    if typed:
        functor += "<" + re.sub(r"\w+::", "", typed.group(1)) + ">"
    return middle(f"{base} [{functor}]", 100)


def _base_name(name: str) -> str:
    """'void at::native::foo<T>(args)' -> 'foo'."""
    import re

    bare = re.sub(r"^void\s+", "", name.replace("(anonymous namespace)::", "").replace("<unnamed>::", ""))
    head = re.split(r"[<(]", bare, maxsplit=1)[0].strip()
    return head.rsplit("::", 1)[-1] or name


def render_kernels(rows: list[dict]) -> str:
    cells = [[r["label"], r["kind"], r["category"], f"{r['instances']:,}", ms(r["total_ns"]),
              pct(r["total_ns"], r["all_ns"]), f"{r['avg_ns'] / 1e3:,.1f}"] for r in rows]
    return render(["kernel", "kind", "category", "n", "total ms", "%", "avg us"], cells, "lllrrrr", max_width=90)
