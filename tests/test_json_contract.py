"""The JSON contract of the README ("The JSON contract"): one document for --json, metrics.json and Python;
every documented key in every entry, units in the names, null and never NaN, deprecated keys equal to
their successors."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from cli_helper import run_analyze as run

REPO = Path(__file__).resolve().parents[1]
WITH_MANIFEST = REPO / "traces/examples/h100-gundam.sqlite.gz"
WITHOUT_MANIFEST = REPO / "traces/examples/nvtx-features-2025.3.sqlite"

TOP = {"schema", "trace", "trace_info", "totals", "ranges", "steps", "step_summary", "opportunities", "workload",
       "gpu", "model_level", "model", "attention_policy", "warnings", "notes"}
TOTALS = {"kernels", "kernel_ns", "attributed_ns", "attributed_frac", "gpu_ops", "gpu_op_ns", "ranges",
          "first_op_ns", "last_op_ns", "gpu_span_ns", "gpu_busy_ns", "gpu_busy_frac"}
ENTRY = {"name", "stage", "parent", "depth", "instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns",
         "cpu_ns", "wall_ns", "idle_ns", "idle_frac", "gpu_idle_ns", "idle_causes_ns", "kernels", "gpu_ops",
         "launches", "kernel_launches", "host_syncs", "api_calls", "memcpy", "memsets", "flops", "bytes",
         "intensity_flop_per_byte", "tflop_per_s_busy", "gb_per_s_busy", "mfu_busy_pct", "mbu_busy_pct",
         "mfu_wall_pct", "mbu_wall_pct", "roof_busy_pct", "bound", "sm_active_wall_pct", "tensor_active_wall_pct",
         "dram_read_wall_pct", "dram_write_wall_pct", "inclusive_frac", "measured",
         "mfu", "mbu", "tflops", "gbs", "intensity"}           # the last five: deprecated
MEASURED = {"mode", "tensor_flops", "simt_flops", "dram_read_bytes", "dram_write_bytes", "l2_bytes", "kernels",
            "kernel_ns", "sampled_steps", "tensor_flops_ratio", "dram_bytes_ratio", "mfu_issued_busy_pct", "scaling"}
CAUSES = {"gpu_other", "sync", "memcpy", "launch", "other_api", "host"}
DEPRECATED = {"mfu": "mfu_busy_pct", "mbu": "mbu_busy_pct", "tflops": "tflop_per_s_busy", "gbs": "gb_per_s_busy",
              "intensity": "intensity_flop_per_byte"}
BOUNDS = {"compute", "memory", "latency", "launch", "host", None}


def no_nan(constant):
    raise AssertionError(f"{constant} in JSON output")


def load(text: str) -> dict:
    return json.loads(text, parse_constant=no_nan)


@pytest.fixture(scope="module", params=[WITH_MANIFEST, WITHOUT_MANIFEST], ids=["manifest", "no-manifest"])
def doc(request):
    from dsocr_perf.analyze.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main([str(request.param), "--json", "--no-cache"])
        except SystemExit as exit:
            assert exit.code in (0, None)
    return load(buffer.getvalue())


def test_top_level_and_totals(doc):
    assert set(doc) == TOP and doc["schema"] == "dsocr-analysis/1"
    assert set(doc["totals"]) == TOTALS
    assert doc["trace"] == doc["trace_info"]["path"] and doc["model"] == doc["model_level"]


def test_every_entry_has_every_key_with_its_unit(doc):
    assert doc["ranges"]
    for entry in doc["ranges"]:
        assert set(entry) == ENTRY, entry["name"]
        assert set(entry["idle_causes_ns"]) == CAUSES
        assert sum(entry["idle_causes_ns"].values()) == entry["idle_ns"]
        assert entry["bound"] in BOUNDS
        for key, value in entry.items():
            if key == "idle_causes_ns":
                assert all(isinstance(v, int) and v >= 0 for v in value.values())
            elif key.endswith("_ns"):
                assert value is None or (isinstance(value, int) and value >= 0), (entry["name"], key, value)
            elif key.endswith("_frac"):
                assert value is None or 0 <= value <= 1, (entry["name"], key, value)
            elif key.endswith("_pct"):
                assert value is None or (isinstance(value, (int, float)) and value >= 0), (entry["name"], key)
            assert not (isinstance(value, float) and not math.isfinite(value))
        for old, new in DEPRECATED.items():
            assert entry[old] == entry[new], (entry["name"], old)
        # Nsight Compute's block: null, or every key (the example's ncu CSV lies beside it)
        assert entry["measured"] is None or set(entry["measured"]) == MEASURED, entry["name"]


def test_steps_and_opportunities(doc):
    for step in doc["steps"]:
        assert sum(step["idle_causes_ns"].values()) == step["idle_ns"] == max(step["wall_ns"] - step["busy_ns"], 0)
    for o in doc["opportunities"]:
        assert {"rank", "kind", "stage", "title", "recoverable_ns", "evidence", "unit", "before_per_s", "after_per_s",
                "after_with_above_per_s", "query"} <= set(o)


def test_metrics_json_is_the_same_document(tmp_path, capsys):
    code, out, err = run(capsys, WITH_MANIFEST, "--json", "--no-cache")
    assert code == 0, err
    cli_doc = load(out)
    code, _, err = run(capsys, "report", WITH_MANIFEST, "--out", tmp_path / "report", "--no-cache")
    assert code == 0, err
    metrics = load((tmp_path / "report/metrics.json").read_text())
    assert metrics["report_schema"] == "dsocr-report/2"
    for key in TOP - {"trace", "trace_info"}:
        assert metrics[key] == cli_doc[key], key
