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
    assert "| dsocr:sam | 1 | 0.049 |" in md
    assert "## Top kernels per stage" in md and "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT" in md
    assert "## Decode step time vs context length" in md
    data = json.loads((report_dir / "metrics.json").read_text())
    summary = (report_dir / "stakeholder_summary.md").read_text()
    # the largest part of the kernel time is named with its share, and the opportunity is the computed one
    top = max(data["breakdown"], key=lambda p: p["ns"])
    assert f"{top['part']} {100 * top['share']:.0f}%" in summary
    assert data["opportunity"]["text"] in summary
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
