"""report: the files people read, and numbers that equal the attribution's and NVIDIA's."""
import hashlib
import json
import shutil

import pytest
from cli_helper import run_analyze as run

from dsocr_perf.analyze.errors import OutputError
from dsocr_perf.analyze.out.report import FILES, build_report, to_yaml, write_report
from dsocr_perf.analyze.trace import open_trace

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def features(shared):
    return open_trace(shared / "fixtures/nsys/nvtx-features-2025.3.sqlite", cache=False)


@pytest.fixture(scope="module")
def report_dir(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(features, out)
    return out


def test_all_files_written(report_dir):
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(FILES)


def test_stage_totals_equal_the_stages_table(features, report_dir):
    data = json.loads((report_dir / "metrics.json").read_text())
    assert (data["schema"], data["report_schema"]) == ("dsocr-analysis/1", "dsocr-report/2")
    table = {r["name"]: r for r in (features).polars("stages").iter_rows(named=True)}
    for row in data["stages"]:
        for key in ("instances", "inclusive_ns", "exclusive_ns", "busy_ns", "cpu_ns", "kernels", "launches"):
            assert row[key] == table[row["name"]][key]
    # nvtx_kern_sum.csv: dsocr:sam 48,993 ns, dsocr:decode 130,053 ns; cuda_gpu_kern_sum: 92 kernels
    by_name = {r["name"]: r for r in data["stages"]}
    assert by_name["dsocr:sam"]["inclusive_ns"] == 48_993
    assert by_name["dsocr:decode"]["inclusive_ns"] == 130_053
    assert data["totals"]["kernels"] == 92
    # the breakdown's disjoint parts add up to the trace's kernel time exactly
    assert sum(p["ns"] for p in data["breakdown"]) == data["totals"]["kernel_ns"]


def test_markdown_and_summary_carry_the_numbers(report_dir):
    md = (report_dir / "report.md").read_text()
    # sam: nested in prefill, 0.049 ms of kernels (nvtx_kern_sum: 48,993 ns)
    assert "| ├ sam | 1 | 167.624 | 0.049 |" in md
    assert "## Top kernels per stage" in md and "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT" in md
    assert "## Decode steps" in md and "### The median step" in md
    data = json.loads((report_dir / "metrics.json").read_text())
    summary = (report_dir / "stakeholder_summary.md").read_text()
    # the largest part of the kernel time is named with its share, and the opportunities are the document's
    top = max(data["breakdown"], key=lambda p: p["ns"])
    assert f"{top['part']} {100 * top['share']:.0f}%" in summary
    assert [o["title"] for o in data["opportunities"]] == [
        "prefill: the GPU waits for the host 100% of the wall time", "decode: the GPU waits for the host 99% of the wall time"]
    for o in data["opportunities"]:
        assert f"{o['rank']}. {o['title']}: recover {o['recoverable_ns'] / 1e6:,.1f} ms" in summary
    assert "measured under tracing" in summary
    # the old single opportunity is the first ranked one, for old readers
    assert (data["opportunity"]["stage"], data["opportunity"]["ns"]) == ("prefill", data["opportunities"][0]["recoverable_ns"])
    # decode: 8 steps, payload = step index, 4 kernels each (nvtx_kern_sum: 32 kernels in 8 decode_step)
    assert [s["step"] for s in data["decode"]["by_step"]] == list(range(8))
    assert sum(s["kernels"] for s in data["decode"]["steps"]) == 32


def test_html_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 3
    for external in ("<script", "<link", 'src="http', "src='http", "url(http", "@import"):
        assert external not in page


def test_inputs_yaml_names_the_trace(features, report_dir):
    text = (report_dir / "inputs.yaml").read_text()
    digest = hashlib.sha256(open(features.path, "rb").read()).hexdigest()
    assert f'  sha256: "{digest}"' in text
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text)["trace"]["sha256"] == digest


def test_yaml_emitter_round_trips():
    yaml = pytest.importorskip("yaml")
    value = {"a": 1, "b": [1, 2.5, None, True], "c": {"d": "x: 'y' \"z\"", "e": []}, "f": [{"g": 1, "h": [3]}], "i": {}}
    assert yaml.safe_load(to_yaml(value)) == value


def test_refuses_to_overwrite(features, report_dir, capsys):
    with pytest.raises(OutputError, match="pass --force"):
        write_report(features, report_dir)
    code, out, err = run(capsys, "report", str(features.path), "--out", str(report_dir), "--no-cache")
    assert code == 4 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"Error: {report_dir} already holds report.md")


def test_missing_trace(tmp_path, capsys):
    code, _, err = run(capsys, "report", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "r"))
    assert code == 3 and len(err.splitlines()) == 1 and "no such file" in err


def test_repeats_and_metrics_from_a_manifest(tmp_path):
    """The repeats capture with a DeepSeek-OCR manifest beside it: dataset section, FLOPs/MFU columns
    equal analyze.metrics', and a roofline in the HTML. (The capture's matmuls are not the real model,
    so the MFU values are meaningless here and the report says so in a warning.)"""
    from dsocr_perf.analyze.metrics.flops import stage_metrics
    from dsocr_perf.dsocr.config import load_preset
    from dsocr_perf.dsocr.workload import workload_shapes

    trace_path = tmp_path / "run.pt.trace.json.gz"
    shutil.copy(DATA / "repeats-a.pt.trace.json.gz", trace_path)
    manifest = json.loads((DATA / "repeats-a.json").read_text())
    workload = workload_shapes(1280, 1700, "gundam", 12, 9).to_dict()
    workload.update(generated_tokens=8, decode_kv_lengths=[workload["prompt_tokens"] + i for i in range(8)])
    manifest["model"] = {"preset": "official", "config": load_preset("official").to_dict(), "dtype": "bfloat16"}
    manifest["workload"] = workload
    for page in manifest["pages"]:
        page["workload"] = workload
    (tmp_path / "run.json").write_text(json.dumps(manifest))

    trace = open_trace(trace_path, cache=False)
    data = build_report(trace)
    rows, _ = stage_metrics((trace).polars("stages"), manifest, "NVIDIA H100 80GB HBM3")
    expected = {r["name"]: r for r in rows}
    for row in data["stages"]:
        assert row["flops"] == expected[row["name"]]["flops"]
        assert row["mfu"] == expected[row["name"]]["mfu"]
    assert data["dataset"]["requests"] == 6 and data["dataset"]["max_repeats"] == 3
    assert data["decode"]["fit"]["x"] == "kv_length"
    assert [s["kv_length"] for s in data["decode"]["by_step"]] == workload["decode_kv_lengths"]
    assert any("above 100%" in w for w in data["warnings"])
    write_report(trace, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "roofline" in page.lower() and page.count("<svg") >= 5


# ---------------------------------------------------------------- the report shows the document's numbers

def _ms(ns) -> str:
    return f"{ns / 1e6:,.3f}"


@pytest.fixture(scope="module")
def analysis(features):
    """The document as `dsocr-analyze TRACE --json` prints it."""
    from dsocr_perf.analyze.out.document import document

    return json.loads(json.dumps(document(features)))


def _md_rows(md: str, heading: str) -> list[list[str]]:
    """The cells of the first table under a `## heading` of report.md."""
    section = md.split(f"## {heading}\n", 1)[1]
    lines = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:] if not line.startswith("| ---")]


def test_stage_table_is_the_documents_hierarchy(analysis, report_dir):
    md = (report_dir / "report.md").read_text()
    rows = _md_rows(md, "Stages")
    # prefill's children indented under it, in pipeline order; decode_step is not a row beside decode
    assert [r[0] for r in rows] == ["prefill", "├ sam", "├ clip", "└ projector", "decode"]
    for cells, r in zip(rows, analysis["ranges"]):
        assert cells[0].endswith(r["stage"])
        assert cells[2:4] == [_ms(r["wall_ns"]), _ms(r["busy_ns"])]        # wall ms, busy ms
        assert cells[5] == _ms(r["inclusive_ns"]) and cells[7] == _ms(r["exclusive_ns"])
    assert "| stage | n | wall ms | busy ms |" in md and "CPU ms" not in md


def test_idle_causes_sum_to_idle_and_are_shown(analysis, report_dir):
    md = (report_dir / "report.md").read_text()
    rows = _md_rows(md, "Where the wall time goes")
    causes = ("host", "launch", "sync", "memcpy", "other_api", "gpu_other")   # the table's column order
    for cells, r in zip(rows, analysis["ranges"]):
        assert sum(r["idle_causes_ns"].values()) == r["idle_ns"] == max(0, r["wall_ns"] - r["busy_ns"])
        assert cells[1:4] == [_ms(r["wall_ns"]), _ms(r["busy_ns"]), _ms(r["idle_ns"])]
        assert cells[4:10] == [_ms(r["idle_causes_ns"][c]) for c in causes]
        assert cells[-1] == (r["bound"] or "-")


def test_opportunities_in_every_report(analysis, report_dir):
    from dsocr_perf.analyze.out.table import _fmt_rate

    md = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    assert len(analysis["opportunities"]) == 2
    for o in analysis["opportunities"]:
        size = _ms(o["recoverable_ns"])
        assert f"{o['rank']}. **{o['title']}**: recover {size} ms" in md
        assert f"recover <b>{size} ms" in page
        change = f"{_fmt_rate(o['before_per_s'])} → {_fmt_rate(o['after_per_s'])} {o['unit']}"
        assert change in md and change in page
        assert o["query"] in md and o["query"] in page
    assert md.count("measured under tracing") >= 3 and page.count("measured under tracing") >= 3


def test_html_stage_rows_are_the_documents(analysis, report_dir):
    page = (report_dir / "report.html").read_text()
    for r in analysis["ranges"]:
        # name, n, wall ms, busy ms as the first cells of its row in the stage table
        assert f">{r['stage']}</td><td>{r['instances']:,}</td><td>{_ms(r['wall_ns'])}</td><td>{_ms(r['busy_ns'])}</td>" in page


def test_definitions_under_the_tables(report_dir):
    from dsocr_perf.analyze.out.table import definitions

    data = json.loads((report_dir / "metrics.json").read_text())
    md = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    import html

    for section in ("stages", "wall", "steps", "opportunities"):
        for term, text in definitions(data)[section]:
            assert f"- **{term}**: {text}" in md
            assert f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" in page
    # the limiter's thresholds are analyze.metrics.efficiency's
    assert "at least 50% of the wall time" in md and "at least 50% of their roof" in md


def test_median_step_timeline_from_the_canonical_tables(analysis, report_dir):
    data = json.loads((report_dir / "metrics.json").read_text())
    tl = data["step_timeline"]
    median = analysis["step_summary"]["median_wall_ns"]
    step = min(analysis["steps"], key=lambda s: (abs(s["wall_ns"] - median), s["start_ns"]))
    assert (tl["step"], tl["wall_ns"], tl["start_ns"]) == (step["step"], step["wall_ns"], step["start_ns"])
    # the union of its kernels is the step's busy time; its calls are the step's API calls
    assert tl["busy_ns"] == step["busy_ns"] and tl["kernels"] == step["kernels"]
    assert sum(lane["calls"] for lane in tl["host"].values()) == step["api_calls"]
    assert tl["host"]["launch"]["calls"] >= step["kernel_launches"]
    assert tl["idle_causes_ns"] == step["idle_causes_ns"]
    assert all(0 <= s <= e for lane in tl["lanes"].values() for s, e in lane)
    md = (report_dir / "report.md").read_text()
    assert f"Decode step {tl['step']} (the median wall time): {_ms(tl['wall_ns'])} ms wall" in md


def test_html_figures_and_wall_language(report_dir):
    page = (report_dir / "report.html").read_text()
    for anchor in ("opportunities", "stages", "wall-time", "efficiency", "decode-steps", "step-timeline", "kernels"):
        assert f"id='{anchor}'" in page
    assert "time per step (ms)" in page and "µs" not in page.split("id='decode-steps'")[1].split("<h3")[0]
    assert "idle: launch" in page and "ms from the step" in page      # the wall-time bars and the timeline
    assert "CPU ms" not in page and "wall ms" in page
    assert "<td class=\"l tree-end\">projector</td>" in page          # a child row, indented by its class


def test_example_report_shows_llm_prefill_and_the_level_shift(tmp_path):
    """The committed H100 example: llm_prefill under prefill, the level shift marked, the sizes of the
    top three opportunities as the document has them."""
    from dsocr_perf.analyze.out.html import render_html
    from dsocr_perf.analyze.out.report import render_markdown, render_summary

    trace = open_trace(__import__("pathlib").Path(__file__).parents[1] / "traces/examples/h100-gundam.sqlite.gz",
                       cache=False)
    data = build_report(trace)
    md, page, summary = render_markdown(data), render_html(data), render_summary(data)
    stages = [r[0] for r in _md_rows(md, "Stages")]
    assert stages == ["preprocess", "prefill", "├ sam", "├ clip", "├ projector", "└ llm_prefill", "decode"]
    shift = data["step_summary"]["level_shift"]
    assert shift["at_step"] == 33
    marked = f"level shift at step 33: {shift['before_mean_ns'] / 1e6:,.1f} → {shift['after_mean_ns'] / 1e6:,.1f} ms"
    assert marked in page
    assert [o["kind"] for o in data["opportunities"]] == ["gpu_idle", "roofline", "host_overlap"]
    for o in data["opportunities"]:
        assert f"recover {_ms(o['recoverable_ns'])} ms" in md and f"recover <b>{_ms(o['recoverable_ns'])} ms" in page
        assert o["title"] in summary
    assert "32.7 → 327 tokens/s" in md
    assert data["step_timeline"]["busy_ns"] == next(s["busy_ns"] for s in data["steps"] if s["step"] == 33)
