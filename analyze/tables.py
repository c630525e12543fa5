"""The canonical tables (Arrow), built from the engine's arrays on first use, each once.

Whatever the source (nsys export of any version, PyTorch-profiler JSON), these are the tables users
query by name (views of `dsocr-analyze sql`, `Trace.table(name)`); times are integer ns on the
trace's clock, pid/tid are OS ids. Columns are documented in the README; names are stable.

    kernels        one row per GPU op (kernel, memcpy, memset) with its innermost range and stage
    launches       every CUDA runtime/driver API call
    cuda_api       the same calls with their kind (launch, sync, memcpy, memset, other), GPU ops
                   launched, GPU-idle time overlapped, innermost range and stage
    ranges         NVTX (or record_function) range instances with depth, parent, path
    marks          instant NVTX marks
    range_stats    one row per range instance: attribution and wall-time accounting
    stages         range_stats totalled per range name
    gpu_gaps       each interval in which a process's GPUs run nothing, with what its launching
                   thread did meanwhile
    gpus, meta     devices; metadata key/value
Helper tables behind the `kernel_ranges` view (analyze.sql): _op_lane_inner, _op_startend,
_range_ancestors.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze import accounting
from dsocr_perf.analyze.attribute import Attribution
from dsocr_perf.analyze.columns import nullable
from dsocr_perf.analyze.read.raw import OP_KINDS, Raw
from dsocr_perf.dsocr import stages as S

PID_MASK = (1 << 24) - 1
STAGE_SET = frozenset({S.REQUEST, S.PREPROCESS, S.PREFILL, S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL, S.DECODE,
                       S.DECODE_STEP})
STATS_COLUMNS = ("instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "kernels", "gpu_ops",
                 "launches")
ACCOUNTING_TIMES = ("wall_ns", "idle_ns", "gpu_idle_ns") + tuple(f"idle_{c}_ns" for c in accounting.CAUSES)
ACCOUNTING_COUNTS = ("api_calls", "kernel_launches", "host_syncs", "memcpy_calls", "memsets") + \
    tuple(f"memcpy_{d}" for d in accounting.DIRECTIONS)
# Nsight Systems' sampled GPU metrics, averaged over the wall time (null when not captured)
METRIC_SHARES = ("sm_active_wall_pct", "tensor_active_wall_pct", "dram_read_wall_pct", "dram_write_wall_pct")


def bare(name: str) -> str:
    """'dsocr:prefill' -> 'prefill': the range's text without its NVTX domain."""
    return name.split(":", 1)[1] if ":" in name else name


class Tables:
    """Canonical tables of one trace, built lazily from Raw + Attribution."""

    def __init__(self, raw: Raw, att: Attribution, open_source=None, idle=None):
        self.raw, self.att = raw, att
        self._open_source = open_source
        self._idle = idle                  # accounting.IdleTime, when worked out already
        self._built: dict[str, pa.Table] = {}
        self._calls = None

    NAMES = ("kernels", "kernels_core", "launches", "cuda_api", "ranges", "ranges_core", "marks", "range_stats", "stages",
             "gpu_gaps", "gpu_metrics", "gpus", "meta", "_op_lane_inner", "_op_startend", "_range_ancestors")

    def get(self, name: str) -> pa.Table:
        if name not in self._built:
            self._built[name] = getattr(self, "_" + name.lstrip("_"))()
        return self._built[name]

    def forget(self, name: str) -> None:
        """Let a built table go (it is built again if asked for)."""
        self._built.pop(name, None)

    # -- shared pieces
    def range_name_list(self) -> list[str]:
        return self.att.ranges.names

    def call_facts(self):
        if self._calls is None:
            self._calls = accounting.call_facts(self.raw, self.att, self._idle)
            self._idle = None
        return self._calls

    def gpu_busy_ns(self) -> int:
        return self.call_facts()[0].gpu_busy_ns

    def range_names(self) -> np.ndarray:
        return np.array(self.att.ranges.names, dtype=object)

    def stage_of_range(self) -> np.ndarray:
        """Per range: the nearest range (itself or an ancestor) whose bare name is a DeepSeek-OCR stage."""
        r = self.att.ranges
        is_stage = np.array([bare(n) in STAGE_SET for n in r.names], bool)[r.name_id] if r.names else \
            np.zeros(0, bool)
        out = np.where(is_stage, np.arange(r.start.size), -1)
        for level in range(1, int(r.depth.max(initial=0)) + 1):   # parents first: depth order
            sel = np.flatnonzero((r.depth == level) & (out < 0) & (r.parent >= 0))
            out[sel] = out[r.parent[sel]]
        return out

    def _stage_names(self, range_index: np.ndarray) -> pa.Array:
        """Per row (a range index, -1): the bare name of that range's stage, NULL outside every stage."""
        stage_range = self.stage_of_range()
        r = self.att.ranges
        idx = take(stage_range, range_index)
        names = [bare(n) for n in r.names]
        code = take(r.name_id, idx)
        return pa.DictionaryArray.from_arrays(pa.array(code, pa.int32(), mask=code < 0), pa.array(names, pa.string()))

    # -- the tables
    def _kernels(self) -> pa.Table:
        """The kernels table with names, launch geometry and categories (a second read of the export)."""
        from dsocr_perf.analyze.metrics.categories import categorize

        core = self.get("kernels_core")
        details = self.raw.details() if self.raw.details else None
        n = core.num_rows
        columns = {name: core.column(name) for name in core.column_names}
        out = {k: columns[k] for k in ("op_id", "kind", "start_ns", "end_ns", "dur_ns", "device", "stream", "pid", "tid",
                                         "correlation")}
        for column in ("name", "short_name", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                       "registers", "shared_mem", "bytes"):
            out[column] = details.column(column) if details is not None else pa.nulls(n, pa.int64())
        for column in ("name", "short_name"):   # a name id missing from StringIds (a damaged export)
            out[column] = _named(out[column])
        out["graph_node"] = columns["graph_node"]
        out["category"] = _categories(out["name"], self.raw.ops.kind, categorize)
        out["innermost_range_id"] = columns["innermost_range_id"]
        out["innermost_stage"] = columns["innermost_stage"]
        return pa.table(out)

    def _kernels_core(self) -> pa.Table:
        """The kernels table without the columns read in a second pass (names, geometry, category)."""
        ops, calls, att = self.raw.ops, self.raw.calls, self.att
        n = len(ops)
        call = att.op_call
        launched = call >= 0
        c = np.maximum(call, 0)
        pid = np.where(launched, calls.pid_of(c) if len(calls) else 0, ops.process & PID_MASK)
        tid = np.where(launched, calls.tid_of(c) if len(calls) else 0, -1)
        kind = pa.DictionaryArray.from_arrays(pa.array(ops.kind.astype(np.int32)), pa.array(OP_KINDS))
        table = {
            "op_id": np.arange(n, dtype=np.int64), "kind": kind, "start_ns": ops.start, "end_ns": ops.end,
            "dur_ns": ops.end - ops.start,
            "device": nullable(ops.device, pa.int32()), "stream": nullable(ops.stream, pa.int64()),
            "pid": nullable(pid, pa.int64()), "tid": nullable(tid, pa.int64()),
            "correlation": nullable(ops.correlation, pa.int64()),
            "graph_node": nullable(ops.graph_node, pa.int64()),
        }
        # not `range_id`/`stage`: joins written `USING (range_id)` across kernels and ranges must stay valid
        inner = att.op_inner
        table["innermost_range_id"] = nullable(inner, pa.int64())
        table["innermost_stage"] = self._stage_names(inner)
        return pa.table(table)

    def _launches(self) -> pa.Table:
        calls = self.raw.calls
        return pa.table({"correlation": nullable(calls.correlation, pa.int64()), "pid": calls.pid, "tid": calls.tid,
                         "start_ns": calls.start, "end_ns": calls.end, "api_name": _api_names(calls)})

    def _cuda_api(self) -> pa.Table:
        calls = self.raw.calls
        facts, _ = self.call_facts()
        kind = pa.DictionaryArray.from_arrays(pa.array(facts.kind.astype(np.int32)), pa.array(accounting.CALL_KINDS))
        direction = pa.DictionaryArray.from_arrays(pa.array(facts.direction.astype(np.int32), mask=facts.direction < 0),
                                                   pa.array(accounting.DIRECTIONS))
        return pa.table({
            "call_id": np.arange(len(calls), dtype=np.int64), "correlation": nullable(calls.correlation, pa.int64()),
            "pid": calls.pid, "tid": calls.tid, "start_ns": calls.start, "end_ns": calls.end,
            "dur_ns": calls.end - calls.start, "api_name": _api_names(calls), "kind": kind,
            "gpu_ops": facts.gpu_ops.astype(np.int64), "memcpy_direction": direction, "gpu_idle_ns": facts.idle_ns,
            "range_id": nullable(facts.inner, pa.int64()), "stage": self._stage_names(facts.inner)})

    def _ranges(self) -> pa.Table:
        return self.get("ranges_core").append_column("payload", _payloads(self.raw.nvtx, self._open_source)[0])

    def _ranges_core(self) -> pa.Table:
        """The ranges table without its payloads (a second read of the export)."""
        r, base = self.att.ranges, self.raw.nvtx.ranges
        return pa.table({
            "range_id": base.column("range_id"), "name": base.column("name"), "domain": base.column("domain"),
            "start_ns": r.start, "end_ns": r.end, "pid": base.column("pid"), "tid": base.column("tid"),
            "depth": r.depth, "parent_id": nullable(r.parent, pa.int64()), "path": self.paths(),
            "style": base.column("style"), "end_tid": base.column("end_tid")})

    def paths(self) -> pa.Array:
        """'prefill/sam': the bare names from the root down, per range (dictionary-encoded); one
        Python string per distinct path, built level by level."""
        if getattr(self, "_paths", None) is not None:
            return self._paths
        r = self.att.ranges
        texts = [bare(x) for x in r.names]
        n_names = max(len(texts), 1)
        path_id = np.full(r.start.size, -1, np.int64)
        paths: list[str] = []
        for level in range(0, int(r.depth.max(initial=-1)) + 1):
            sel = np.flatnonzero(r.depth == level)
            parent_path = np.where(r.parent[sel] >= 0, path_id[np.maximum(r.parent[sel], 0)], -1)
            pairs, inverse = np.unique((parent_path + 1) * n_names + r.name_id[sel], return_inverse=True)
            first = len(paths)
            for pair in pairs.tolist():
                parent, name = divmod(pair, n_names)
                paths.append(texts[name] if parent == 0 else paths[parent - 1] + "/" + texts[name])
            path_id[sel] = first + inverse.reshape(-1)
        self._paths = pa.DictionaryArray.from_arrays(pa.array(path_id, pa.int32(), mask=path_id < 0),
                                                     pa.array(paths, pa.string()))
        return self._paths

    def _marks(self) -> pa.Table:
        nvtx = self.raw.nvtx
        return nvtx.marks.append_column("payload", _payloads(nvtx, self._open_source)[1])

    def _range_stats(self) -> pa.Table:
        r, st = self.att.ranges, self.att.stats
        _, acc = self.call_facts()
        base = self.raw.nvtx.ranges
        columns = {
            "range_id": base.column("range_id"), "name": base.column("name"), "depth": r.depth, "path": self.paths(),
            "outermost_of_name": st["outermost_of_name"],
            **{k: st[k] for k in ("cpu_ns", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns")},
            "gpu_start_ns": nullable(st["first_ns"], pa.int64(), st["gpu_ops"] == 0),
            "gpu_end_ns": nullable(st["last_ns"], pa.int64(), st["gpu_ops"] == 0),
            **{k: st[k] for k in ("kernels", "gpu_ops", "launches")},
            **{k: acc[k] for k in ACCOUNTING_TIMES + ACCOUNTING_COUNTS},
            **self._metric_shares(),
        }
        return pa.table(columns)

    def metrics(self):
        """Nsight Systems' GPU metrics samples (analyze.read.gpu_metrics), or None."""
        if not hasattr(self, "_metrics"):
            self._metrics = self.raw.gpu_metrics() if self.raw.gpu_metrics else None
        return self._metrics

    def _metric_shares(self) -> dict:
        """Per range: each sampled GPU metric averaged over the range's wall time."""
        r = self.att.ranges
        sampled = self.metrics()
        means = sampled.window_means(r.start, r.end) if sampled is not None else {}
        out = {}
        for column in METRIC_SHARES:
            values = means.get(column.removesuffix("_wall_pct"))
            out[column] = pa.nulls(r.start.size, pa.float64()) if values is None else \
                pa.array(values, pa.float64(), from_pandas=True)
        return out

    def _gpu_metrics(self) -> pa.Table:
        sampled = self.metrics()
        if sampled is None:
            return pa.table({"timestamp_ns": pa.array([], pa.int64()), "gpu_type": pa.array([], pa.int64()),
                             "metric": pa.array([], pa.string()), "value": pa.array([], pa.float64())})
        rows = sampled.rows
        return pa.table({"timestamp_ns": rows["timestamp_ns"], "gpu_type": rows["gpu_type"],
                         "metric": pa.array(rows["metric"].tolist(), pa.string()).dictionary_encode(),
                         "value": rows["value"]})

    def _stages(self) -> pa.Table:
        """Per range name, in order of first appearance. Times sum every instance (an instance nested in
        one of the same name adds its time again, as nsys nvtx_kern_sum does); counts of kernels and
        calls count each once per name."""
        stats = self.get("range_stats")
        r = self.att.ranges
        n_names = len(r.names)
        name_id = r.name_id
        outer = stats.column("outermost_of_name").to_numpy(zero_copy_only=False)

        def total(column, where=None):
            values = stats.column(column).to_numpy(zero_copy_only=False)
            ids, w = (name_id, values) if where is None else (name_id[where], values[where])
            return np.rint(np.bincount(ids, weights=w, minlength=n_names)).astype(np.int64)

        first = np.full(n_names, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, name_id, np.arange(name_id.size))
        depth = np.full(n_names, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(depth, name_id, r.depth)
        out = {"name": pa.array(r.names, pa.string()), "instances": np.bincount(name_id, minlength=n_names).astype(np.int64)}
        for column in ("inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns"):
            out[column] = total(column)
        out["kernels"] = total("kernels", outer)
        out["gpu_ops"], out["launches"] = total("gpu_ops"), total("launches")
        out["depth"], out["first_range_id"] = depth.astype(np.int32), first
        for column in ACCOUNTING_TIMES:
            out[column] = total(column)
        for column in ACCOUNTING_COUNTS:
            out[column] = total(column, outer)
        for column in METRIC_SHARES:     # weighted by wall time, over the instances that have samples
            values = stats.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
            wall = stats.column("wall_ns").to_numpy().astype(np.float64)
            has = ~np.isnan(values)
            weight = np.bincount(name_id[has], weights=wall[has], minlength=n_names)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.bincount(name_id[has], weights=values[has] * wall[has], minlength=n_names) / weight
            out[column] = pa.array(np.where(weight > 0, mean, np.nan), pa.float64(), from_pandas=True)
        table = pa.table(out)
        seen = out["instances"] > 0
        order = np.argsort(first[seen], kind="stable")
        return table.filter(pa.array(seen)).take(pa.array(order))

    def _gpu_gaps(self) -> pa.Table:
        from dsocr_perf.analyze.gaps import gpu_gaps

        return gpu_gaps(self.raw, self.att, self.call_facts()[0], self._stage_names)

    def _gpus(self) -> pa.Table:
        return self.raw.gpus

    def _meta(self) -> pa.Table:
        keys, values = zip(*self.raw.meta) if self.raw.meta else ((), ())
        return pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(values, pa.string())})

    def _op_lane_inner(self) -> pa.Table:
        att = self.att
        per_lane = att.op_lane_inner()
        if per_lane:
            ops = np.concatenate([o for o, _ in per_lane])
            rng = np.concatenate([r for _, r in per_lane])
        else:
            ops = rng = np.zeros(0, np.int64)
        return pa.table({"op_id": ops, "range_id": rng, "innermost_id": att.op_inner[ops]})

    def _op_startend(self) -> pa.Table:
        ops, rng = self.att.op_startend()
        return pa.table({"op_id": ops, "range_id": rng, "innermost_id": self.att.op_inner[ops]})

    def _range_ancestors(self) -> pa.Table:
        """(range, ancestor) for every push/pop range, itself included: the ranges' own parent links."""
        r = self.att.ranges
        rows = np.flatnonzero(r.pushpop & r.live)
        out_r, out_a = [rows], [rows]
        up = r.parent[rows]
        while True:
            has = up >= 0
            if not has.any():
                break
            rows, up = rows[has], up[has]
            out_r.append(rows)
            out_a.append(up)
            up = r.parent[up]
        return pa.table({"range_id": np.concatenate(out_r), "ancestor_id": np.concatenate(out_a)})


def take(values: np.ndarray, index: np.ndarray, missing: int = -1) -> np.ndarray:
    """values[index] where index >= 0, `missing` elsewhere (also when `values` is empty)."""
    if not values.size:
        return np.full(index.size, missing, np.int64)
    return np.where(index >= 0, values[np.maximum(index, 0)], missing)


UNKNOWN_NAME = "(name not in the export)"


def _named(column):
    """A name column without NULLs: every op has a name, UNKNOWN_NAME where the export lost it."""
    if not column.null_count:
        return column
    if pa.types.is_null(column.type):
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(column), np.int32)), pa.array([UNKNOWN_NAME]))
    return column.cast(pa.string()).fill_null(UNKNOWN_NAME).dictionary_encode()


def _api_names(calls) -> pa.Array:
    code = calls.name_id
    return pa.DictionaryArray.from_arrays(pa.array(code, pa.int32(), mask=code < 0), pa.array(calls.names, pa.string()))


def _categories(name, kind: np.ndarray, categorize) -> pa.Array:
    """Category per op from its name (categorized once per distinct name) and kind."""
    from dsocr_perf.analyze.metrics.categories import CATEGORIES

    n = len(kind)
    if isinstance(name, pa.ChunkedArray):
        name = name.combine_chunks() if name.num_chunks != 1 else name.chunk(0)
    if not pa.types.is_dictionary(name.type):
        name = name.cast(pa.string()).dictionary_encode()
    values = name.dictionary.to_pylist()
    codes = name.indices.fill_null(-1).to_numpy(zero_copy_only=False)   # NULL (a name id not in StringIds): -1
    index = {c: i for i, c in enumerate(CATEGORIES)}
    per_value = np.array([index[categorize(v, "kernel")] for v in values] + [index["other"]], np.int32)
    out = per_value[codes] if n else np.zeros(0, np.int32)
    out = np.where(kind != 0, index["memory"], out)
    return pa.DictionaryArray.from_arrays(pa.array(out, pa.int32()), pa.array(CATEGORIES))


def _payloads(nvtx, open_source) -> tuple[pa.Array, pa.Array]:
    if nvtx.payloads is None:
        return pa.nulls(nvtx.ranges.num_rows, pa.string()), pa.nulls(nvtx.marks.num_rows, pa.string())
    return nvtx.payloads(open_source)
