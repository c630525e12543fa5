"""Nsight Compute's measurements in the stage outputs: which CSVs a trace gets and the `measured` block of each
range entry in the JSON document (its text table: analyze.out.ncu.measured_table).

CSVs: `--ncu FILE` (repeatable), else NAME.ncu.csv, NAME.ncu-kernels.csv, NAME.ncu-simt.csv (plain or .gz) beside
the trace (a note says so; `--no-ncu` skips them). Their sidecar NAME.ncu.json gives the workload ncu profiled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsocr_perf.analyze.errors import AnalyzeError, UsageError
from dsocr_perf.analyze.metrics import explain
from dsocr_perf.analyze.metrics.measured import measure
from dsocr_perf.analyze.read import ncu as reader
from dsocr_perf.dsocr import stages as S


@dataclass
class NcuInput:
    runs: list                     # reader.NcuCsv
    sidecar: reader.Sidecar | None
    found_beside: bool             # found by the trace's stem, not named with --ncu
    warnings: list = field(default_factory=list)


def load(paths) -> tuple[list, reader.Sidecar | None]:
    """Read the CSVs and the sidecar of the first; two CSVs of one mode are refused (which would count?)."""
    runs = [reader.read_ncu_csv(p) for p in paths]
    sidecar = reader.read_sidecar(runs[0].path) if runs else None
    for run in runs:
        reader.check_rows(run, sidecar)
    by_kind: dict = {}
    for run in runs:
        kind = (run.mode, "simt" if run.metrics == {"simt_flops"} else "main")
        if kind in by_kind:
            raise UsageError(f"{by_kind[kind].path} and {run.path} are both {run.mode} runs of the same metrics: give "
                             "one ranges CSV and one kernel-replay CSV of a session")
        by_kind[kind] = run
    return runs, sidecar


def for_trace(trace_path: Path, named: tuple, skip: bool) -> NcuInput | bool | None:
    """The ncu input of `dsocr-analyze TRACE`: --ncu files (a bad one is an error), else the CSVs beside the trace
    (a bad one is left out with a warning: nobody asked for it); False with --no-ncu, None without any CSV."""
    if named and skip:
        raise UsageError("--ncu and --no-ncu contradict each other: pass one")
    if named:
        return NcuInput(*load(named), found_beside=False)
    if skip:
        return False
    paths = reader.beside(trace_path)
    if not paths:
        return None
    try:
        return NcuInput(*load(paths), found_beside=True)
    except AnalyzeError as e:
        return NcuInput([], None, True, [f"Nsight Compute CSV beside the trace left out ({e}); pass --no-ncu to skip "
                                         "it"])


def add_measured(doc: dict, ncu: NcuInput | bool | None, trace, policy=None) -> None:
    """Every range entry gets `measured` (null without ncu data for it); notes and findings join the document's.
    `ncu`: None finds the CSVs beside the trace (so --json, metrics.json and document() agree), False: none."""
    for entry in doc["ranges"]:
        entry["measured"] = None
    if ncu is None:
        ncu = for_trace(trace.path, (), False)
    if not ncu:            # None or False
        return
    doc["warnings"] = list(doc["warnings"]) + [w for w in ncu.warnings if w not in doc["warnings"]]
    if not ncu.runs:
        return
    steps = doc["step_summary"]
    total_steps = steps["steps"] if steps.get("requests") == 1 else None
    m = measure(ncu.runs, ncu.sidecar, trace.manifest, total_steps, policy)
    pages = next((e["instances"] for e in doc["ranges"] if e["stage"] == S.PREFILL), None)
    same_pages = pages is not None and pages == max(len(m.requests), 1)
    peak = (doc.get("gpu") or {}).get("peak_tflops")
    for entry in doc["ranges"]:
        entry["measured"] = m.block(entry["stage"], entry["busy_ns"] if same_pages else None, peak)
    notes = list(m.notes)
    if ncu.found_beside:
        notes[0] += " (found beside the trace; --no-ncu to leave it out)"
    if pages is not None and not same_pages:
        notes.append(f"ncu profiled {max(len(m.requests), 1)} page(s), the trace has {pages}: issued MFU left empty")
    notes += explain.findings(m)
    doc["notes"] = list(doc["notes"]) + notes
    doc["warnings"] = list(doc["warnings"]) + [w for w in m.warnings if w not in doc["warnings"]]
