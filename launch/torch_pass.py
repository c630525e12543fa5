"""The PyTorch profiler pass: its own Chrome trace and an operator table per stage, as Markdown.

Every operator is charged to the innermost enclosing stage range (`record_function` of
dsocr.stages.stage): `sam`, `clip`, `projector`, `llm_prefill`, `decode_step`, `preprocess`, or
`(none)` outside all stages. Self times add up across rows; total times of nested operators
overlap (aten::linear contains aten::addmm), as in torch's own key_averages table.
"""
from __future__ import annotations

import gzip
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsocr_perf.dsocr import stages

STAGE_NAMES = {stages.REQUEST, stages.PREPROCESS, stages.PREFILL, stages.SAM, stages.CLIP, stages.PROJECTOR,
               stages.LLM_PREFILL, stages.DECODE, stages.DECODE_STEP}
NO_STAGE = "(none)"
TOP_PER_STAGE = 15
TOP_OVERALL = 30


@dataclass(frozen=True)
class OpEvent:
    """One operator call as the profiler saw it (times in microseconds)."""
    name: str
    stage: str
    self_cpu_us: float
    cpu_us: float
    self_cuda_us: float
    cuda_us: float


@dataclass
class OpRow:
    name: str
    calls: int = 0
    self_cpu_us: float = 0.0
    cpu_us: float = 0.0
    self_cuda_us: float = 0.0
    cuda_us: float = 0.0

    def add(self, e: OpEvent) -> None:
        self.calls += 1
        self.self_cpu_us += e.self_cpu_us
        self.cpu_us += e.cpu_us
        self.self_cuda_us += e.self_cuda_us
        self.cuda_us += e.cuda_us


@dataclass
class StageRow:
    name: str
    instances: int = 0
    wall_us: float = 0.0    # the stage ranges' own CPU wall time
    ops: dict = field(default_factory=dict)

    @property
    def self_cpu_us(self) -> float:
        return sum(r.self_cpu_us for r in self.ops.values())

    @property
    def self_cuda_us(self) -> float:
        return sum(r.self_cuda_us for r in self.ops.values())

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.ops.values())


def _device_time(evt, self_only: bool) -> float:
    names = ("self_device_time_total", "self_cuda_time_total") if self_only else \
            ("device_time_total", "cuda_time_total")
    for name in names:
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


def innermost_stage(evt) -> str:
    parent = evt.cpu_parent
    while parent is not None:
        if parent.name in STAGE_NAMES:
            return parent.name
        parent = parent.cpu_parent
    return NO_STAGE


def collect(events) -> tuple[list[OpEvent], dict[str, StageRow]]:
    """Operator calls with their stage, and the stage ranges themselves, from `prof.events()`."""
    ops: list[OpEvent] = []
    stage_rows: dict[str, StageRow] = {}
    for evt in events:
        if getattr(evt, "device_type", None) is not None and evt.device_type.name != "CPU":
            continue
        if evt.name in STAGE_NAMES:
            row = stage_rows.setdefault(evt.name, StageRow(evt.name))
            row.instances += 1
            row.wall_us += float(evt.cpu_time_total)
            continue
        ops.append(OpEvent(evt.name, innermost_stage(evt), float(evt.self_cpu_time_total),
                           float(evt.cpu_time_total), _device_time(evt, True), _device_time(evt, False)))
    return ops, stage_rows


def aggregate(ops: list[OpEvent], stage_rows: dict[str, StageRow]) -> tuple[dict[str, OpRow], dict[str, StageRow]]:
    overall: dict[str, OpRow] = {}
    for e in ops:
        overall.setdefault(e.name, OpRow(e.name)).add(e)
        row = stage_rows.setdefault(e.stage, StageRow(e.stage))
        row.ops.setdefault(e.name, OpRow(e.name)).add(e)
    return overall, stage_rows


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def _op_table(rows, limit: int) -> list[str]:
    ranked = sorted(rows, key=lambda r: (-r.self_cuda_us, -r.self_cpu_us, r.name))[:limit]
    lines = ["| operator | calls | self CPU ms | total CPU ms | self CUDA ms | total CUDA ms |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r.name}` | {r.calls} | {_ms(r.self_cpu_us)} | {_ms(r.cpu_us)} | {_ms(r.self_cuda_us)} | "
              f"{_ms(r.cuda_us)} |" for r in ranked]
    if len(rows) > limit:
        lines.append(f"| ... {len(rows) - limit} more operators | | | | | |")
    return lines


STAGE_ORDER = [stages.REQUEST, stages.PREPROCESS, stages.PREFILL, stages.SAM, stages.CLIP, stages.PROJECTOR,
               stages.LLM_PREFILL, stages.DECODE, stages.DECODE_STEP, NO_STAGE]


def markdown(title: str, header: list[str], overall: dict[str, OpRow], stage_rows: dict[str, StageRow]) -> str:
    ordered = sorted(stage_rows.values(), key=lambda s: STAGE_ORDER.index(s.name)
                     if s.name in STAGE_ORDER else len(STAGE_ORDER))
    out = [f"# {title}", "", *header, "",
           "## Stages", "",
           "Operators are charged to their innermost enclosing stage range; `wall ms` is the stage "
           "ranges' own CPU time (all instances).", "",
           "| stage | instances | wall ms | operator calls | self CPU ms | self CUDA ms |",
           "|---|---:|---:|---:|---:|---:|"]
    for s in ordered:
        out.append(f"| `{s.name}` | {s.instances} | {_ms(s.wall_us)} | {s.calls} | {_ms(s.self_cpu_us)} | "
                   f"{_ms(s.self_cuda_us)} |")
    total_cpu = sum(r.self_cpu_us for r in overall.values())
    total_cuda = sum(r.self_cuda_us for r in overall.values())
    out += [f"| **all operators** | | | {sum(r.calls for r in overall.values())} | {_ms(total_cpu)} | "
            f"{_ms(total_cuda)} |", "",
            f"## Top operators overall (by self CUDA time, then self CPU time; {TOP_OVERALL} at most)", "",
            *_op_table(list(overall.values()), TOP_OVERALL), ""]
    for s in ordered:
        if not s.ops:
            continue
        out += [f"## Stage `{s.name}`", "", *_op_table(list(s.ops.values()), TOP_PER_STAGE), ""]
    return "\n".join(out)


def write_chrome_trace_gz(prof, path: Path) -> None:
    """Export as JSON then gzip ourselves (works with every torch that has export_chrome_trace)."""
    plain = path.with_name(path.name.removesuffix(".gz") + ".tmp")
    prof.export_chrome_trace(str(plain))
    with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    os.remove(plain)


def profile(run, describe, *, cuda: bool, trace_path: Path, ops_path: Path, title: str, header: list[str],
            report=lambda what, seconds: None):
    """Run `run()` under torch.profiler (CPU + CUDA activities); write the trace and the table.

    `describe(result)` returns {key: JSON text} stored in the trace's metadata; `report(what, seconds)` hears how
    long each part took."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        result = run()
        for key, value in describe(result).items():
            prof.add_metadata_json(key, value)
    report("profiled page(s) (the profiler's own collection included)", time.perf_counter() - t)
    t = time.perf_counter()
    write_chrome_trace_gz(prof, trace_path)
    report(f"Chrome trace ({trace_path.stat().st_size / 1e6:.1f} MB)", time.perf_counter() - t)
    t = time.perf_counter()
    overall, stage_rows = aggregate(*collect(prof.events()))
    ops_path.write_text(markdown(title, header, overall, stage_rows))
    report("operator table", time.perf_counter() - t)
    return result
