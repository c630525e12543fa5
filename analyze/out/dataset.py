"""Statistics over the pages and repeats of one capture: per-page and overall stage GPU time with
its spread, tokens/s and pages/s.

A dataset capture wraps each page (and each repeat of it) in one `request` range (domain dsocr;
payload = request index). Every stage instance (prefill, sam, decode_step, ...) belongs to the
request whose time interval encloses it in the same process. A stage's GPU time in a request is
the sum of the inclusive kernel time of its instances there (a page runs `sam` once per view batch:
both count). The statistics are over requests:

- per page (the manifest's `pages` list maps a request index to its image and repeat): n repeats,
  mean, std (sample, n-1), min, max and cv = std/mean of the stage's per-request GPU time;
- overall: the same over every request, plus `repeat_std_ns`, the pooled within-page std
  (sqrt of the repeat-weighted mean of per-page variances): the run-to-run noise of the stage,
  free of differences between pages. `diff` uses it to judge significance.

Without a manifest (in the trace or as NAME.json beside it) every request is its own page, so
nothing is known about repeats. Throughput: pages/s = requests / sum of request wall times;
tokens/s = generated tokens / sum of request wall times (end to end); decode tokens/s = tokens /
sum of `decode` wall times. Generated tokens per request come from the manifest, else from the
number of `decode_step` ranges in the request.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.dsocr import stages

if TYPE_CHECKING:
    import polars as pl

STAGE_ORDER = [stages.PREPROCESS, stages.PREFILL, stages.SAM, stages.CLIP, stages.PROJECTOR,
               stages.LLM_PREFILL, stages.DECODE, stages.DECODE_STEP]

# Bare stage name (domain stripped) of a range: 'dsocr:sam' -> 'sam'; default-domain 'sam' -> 'sam'.
BARE_NAME = "CASE WHEN r.domain IS NULL OR r.domain = '' THEN r.name ELSE substr(r.name, length(r.domain) + 2) END"

REQUEST_RANGES_SQL = f"""
-- one row per request range (a page or a repeat), in time order
SELECT r.range_id, r.pid, r.start_ns, coalesce(r.end_ns, r.start_ns) AS end_ns, r.payload
FROM ranges r
WHERE coalesce(r.domain, '') IN ('{stages.DOMAIN}', '') AND {BARE_NAME} = '{stages.REQUEST}'
ORDER BY r.start_ns, r.range_id
"""

STAGE_INSTANCES_SQL = f"""
-- every stage instance inside a request, with its inclusive kernel time and wall time
WITH req AS ({{requests}}),
inst AS (
    SELECT r.range_id, {BARE_NAME} AS stage, r.pid, r.start_ns, coalesce(r.end_ns, r.start_ns) AS end_ns
    FROM ranges r
    WHERE coalesce(r.domain, '') IN ('{stages.DOMAIN}', '') AND {BARE_NAME} <> '{stages.REQUEST}'
),
gpu AS (
    SELECT kr.range_id, sum(k.dur_ns)::BIGINT AS gpu_ns, count(*)::BIGINT AS kernels
    FROM kernel_ranges kr JOIN kernels k USING (op_id)
    WHERE k.kind = 'kernel'
    GROUP BY kr.range_id
)
SELECT req.request, i.stage, i.range_id, i.end_ns - i.start_ns AS wall_ns,
       coalesce(gpu.gpu_ns, 0) AS gpu_ns, coalesce(gpu.kernels, 0) AS kernels
FROM inst i
JOIN req ON i.pid IS NOT DISTINCT FROM req.pid AND i.start_ns >= req.start_ns AND i.end_ns <= req.end_ns
LEFT JOIN gpu USING (range_id)
"""


@dataclass
class DatasetStats:
    """Per-request, per-page and overall stage statistics of one capture (times in ns)."""
    requests: pl.DataFrame   # request, page, repeat, wall_ns, tokens
    per_request: pl.DataFrame  # request, stage, instances, gpu_ns, wall_ns, kernels
    per_page: pl.DataFrame   # page, stage, n, mean_ns, std_ns, min_ns, max_ns, cv
    overall: pl.DataFrame    # stage, n, mean_ns, std_ns, min_ns, max_ns, cv, repeat_std_ns, repeat_cv
    throughput: dict = field(default_factory=dict)
    has_manifest: bool = False
    max_repeats: int = 1

    def to_dict(self) -> dict:
        return {
            "requests": self.requests.height,
            "pages": self.requests["page"].n_unique() if self.requests.height else 0,
            "max_repeats": self.max_repeats,
            "pages_known": self.has_manifest,
            "throughput": self.throughput,
            "per_page": self.per_page.to_dicts(),
            "overall": self.overall.to_dicts(),
        }


def _request_table(trace, manifest: dict | None) -> pl.DataFrame:
    import polars as pl

    rows = trace.con.execute(REQUEST_RANGES_SQL).fetchall()
    pages = {}
    for entry in (manifest or {}).get("pages") or []:
        if isinstance(entry, dict) and entry.get("request") is not None:
            pages[int(entry["request"])] = entry
    out = []
    for order, (range_id, pid, start_ns, end_ns, payload) in enumerate(rows):
        index = int(payload) if payload not in (None, "") and str(payload).lstrip("-").isdigit() else order
        entry = pages.get(index)
        if entry:
            image = entry.get("image") or {}
            page = image.get("path") or image.get("sha256") or (
                f"page {entry['page']}" if entry.get("page") is not None else f"request {index}")
            repeat = entry.get("repeat")
            tokens = (entry.get("workload") or {}).get("generated_tokens")
        else:
            page, repeat, tokens = f"request {index}", None, None
        out.append({"request": index, "range_id": range_id, "pid": pid, "start_ns": start_ns, "end_ns": end_ns,
                    "page": str(page), "repeat": repeat, "wall_ns": end_ns - start_ns, "tokens": tokens})
    schema = {"request": pl.Int64, "range_id": pl.Int64, "pid": pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64,
              "page": pl.Utf8, "repeat": pl.Int64, "wall_ns": pl.Int64, "tokens": pl.Int64}
    return pl.DataFrame(out, schema=schema)


def _stats(frame, by: list[str]):
    import polars as pl

    return (frame.group_by(by, maintain_order=True)
            .agg(pl.len().alias("n"), pl.col("gpu_ns").mean().alias("mean_ns"), pl.col("gpu_ns").std().alias("std_ns"),
                 pl.col("gpu_ns").min().alias("min_ns"), pl.col("gpu_ns").max().alias("max_ns"))
            .with_columns(pl.when(pl.col("mean_ns") > 0).then(pl.col("std_ns") / pl.col("mean_ns"))
                          .otherwise(None).alias("cv")))


def _stage_rank(name: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER), name)


def dataset_stats(trace, manifest: dict | None = None) -> DatasetStats | None:
    """Statistics over the trace's `request` ranges; None when the trace has none."""
    import polars as pl

    manifest = manifest if manifest is not None else trace.manifest
    requests = _request_table(trace, manifest)
    if requests.height == 0:
        return None
    con = trace.con
    con.register("dsocr_requests", requests.select("request", "pid", "start_ns", "end_ns").to_arrow())
    try:
        instances = pl.from_arrow(con.sql(
            STAGE_INSTANCES_SQL.format(requests="SELECT * FROM dsocr_requests")).to_arrow_table())
    finally:
        con.unregister("dsocr_requests")
    if not isinstance(instances, pl.DataFrame) or instances.height == 0:
        instances = pl.DataFrame(schema={"request": pl.Int64, "stage": pl.Utf8, "range_id": pl.Int64,
                                         "wall_ns": pl.Int64, "gpu_ns": pl.Int64, "kernels": pl.Int64})
    per_request = (instances.group_by("request", "stage")
                   .agg(pl.len().alias("instances"), pl.col("gpu_ns").sum(), pl.col("wall_ns").sum(),
                        pl.col("kernels").sum()))
    stage_names = sorted(per_request["stage"].unique().to_list(), key=_stage_rank)
    # Every request gets every stage (0 ns where absent), so means are over all requests.
    grid = requests.select("request", "page").join(pl.DataFrame({"stage": stage_names}, schema={"stage": pl.Utf8}),
                                                   how="cross")
    per_request = (grid.join(per_request, on=["request", "stage"], how="left")
                   .with_columns(pl.col("instances", "gpu_ns", "wall_ns", "kernels").fill_null(0))
                   .sort("request", pl.col("stage").map_elements(lambda s: _stage_rank(s)[0], return_dtype=pl.Int64)))

    per_page = _stats(per_request, ["page", "stage"])
    overall = _stats(per_request, ["stage"])
    pooled = (per_page.filter(pl.col("n") >= 2)
              .group_by("stage").agg(((pl.col("std_ns") ** 2 * (pl.col("n") - 1)).sum()
                                      / (pl.col("n") - 1).sum()).sqrt().alias("repeat_std_ns")))
    overall = (overall.join(pooled, on="stage", how="left")
               .with_columns(pl.when(pl.col("mean_ns") > 0).then(pl.col("repeat_std_ns") / pl.col("mean_ns"))
                             .otherwise(None).alias("repeat_cv")))

    # Tokens per request: the manifest's, else the decode steps seen.
    steps = (per_request.filter(pl.col("stage") == stages.DECODE_STEP).select("request", pl.col("instances").alias("steps")))
    requests = (requests.join(steps, on="request", how="left")
                .with_columns(pl.coalesce("tokens", "steps", pl.lit(0)).alias("tokens")).drop("steps"))
    total_wall_s = requests["wall_ns"].sum() / 1e9
    decode_wall_s = per_request.filter(pl.col("stage") == stages.DECODE)["wall_ns"].sum() / 1e9
    tokens = int(requests["tokens"].sum())
    throughput = {
        "requests": requests.height,
        "generated_tokens": tokens,
        "request_wall_s": total_wall_s,
        "pages_per_s": requests.height / total_wall_s if total_wall_s > 0 else None,
        "tokens_per_s": tokens / total_wall_s if total_wall_s > 0 else None,
        "decode_tokens_per_s": tokens / decode_wall_s if decode_wall_s > 0 else None,
    }
    repeats_per_page = requests.group_by("page").len()["len"]
    return DatasetStats(
        requests=requests.select("request", "page", "repeat", "wall_ns", "tokens"),
        per_request=per_request,
        per_page=per_page,
        overall=overall,
        throughput=throughput,
        has_manifest=manifest is not None and bool(manifest.get("pages")),
        max_repeats=int(repeats_per_page.max()) if repeats_per_page.len() else 0,
    )


def _num(ns, scale: float) -> str:
    return "-" if ns is None or (isinstance(ns, float) and math.isnan(ns)) else f"{ns / scale:,.3f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def format_stats(stats: DatasetStats) -> str:
    """The overall and per-page tables as plain text (ms, or µs when every mean is below a millisecond)."""
    from dsocr_perf.analyze.out.table import _plural

    t = stats.throughput
    pages = stats.requests["page"].n_unique()
    lines = [f"{_plural(t['requests'], 'request')} over {_plural(pages, 'page')}, up to "
             f"{_plural(stats.max_repeats, 'repeat')} each"
             + ("" if stats.has_manifest else " (no manifest: each request counted as its own page)")]
    rate = lambda v, unit: "-" if v is None else f"{v:,.2f} {unit}"
    lines.append(f"throughput: {rate(t['pages_per_s'], 'pages/s')}, {rate(t['tokens_per_s'], 'tokens/s')} end to end, "
                 f"{rate(t['decode_tokens_per_s'], 'tokens/s')} in decode ({t['generated_tokens']} tokens)")
    biggest = stats.overall["max_ns"].max() or 0
    unit, scale = ("ms", 1e6) if biggest >= 1e6 else ("us", 1e3)
    width = max([5] + [len(s) for s in stats.overall["stage"].to_list()])
    header = (f"{'stage':<{width}} {'n':>4} {'mean ' + unit:>10} {'std ' + unit:>9} {'min ' + unit:>10} "
              f"{'max ' + unit:>10} {'cv':>7}")

    def row_text(row, repeat=True):
        text = (f"{row['stage']:<{width}} {row['n']:>4} {_num(row['mean_ns'], scale):>10} {_num(row['std_ns'], scale):>9} "
                f"{_num(row['min_ns'], scale):>10} {_num(row['max_ns'], scale):>10} {_pct(row['cv']):>7}")
        return text + (f" {_pct(row['repeat_cv']):>10}" if repeat else "")

    lines += ["", "GPU time per request (inclusive kernel time), all requests; repeat cv = pooled within-page std / mean",
              header + f" {'repeat cv':>10}"]
    lines += [row_text(row) for row in stats.overall.iter_rows(named=True)]
    if stats.has_manifest:
        for page, frame in stats.per_page.group_by("page", maintain_order=True):
            lines += ["", f"page {page[0]}", header]
            lines += [row_text(row, repeat=False) for row in frame.iter_rows(named=True)]
    return "\n".join(lines)


def register(cli, common) -> None:
    @cli.command("dataset", short_help="Per-page stage statistics over request ranges.")
    @common.trace_argument
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @common.no_cache_option
    def dataset_command(trace_path: Path, as_json: bool, no_cache: bool) -> None:
        """Per-page and overall stage statistics over the `request` ranges of TRACE (pages x repeats)."""
        trace = common.open(trace_path, no_cache, quiet=as_json)
        stats = dataset_stats(trace)
        if stats is None:
            raise TraceError(f"{trace_path} has no '{stages.REQUEST}' ranges: capture pages with dsocr-trace "
                             "(each page and repeat is one request range) to get dataset statistics")
        if as_json:
            common.echo_json(clean(stats.to_dict()))
        else:
            common.echo(format_stats(stats))


def clean(value):
    from dsocr_perf.analyze.out.document import clean as clean_document

    return clean_document(value)
