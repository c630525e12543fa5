"""diff A B on real H100 captures: itself -> all zeros and nothing significant; a -> b (twice the sam
layers, 12 instead of 8 decode steps) -> the changed stages and only those are significant."""
import json
import shutil

import pytest
from cli_helper import run_analyze as run

from dsocr_perf.analyze.out.diff import compare, side_of
from dsocr_perf.analyze.trace import open_trace

DATA = __import__("pathlib").Path(__file__).parent / "data"
A = DATA / "repeats-a.pt.trace.json.gz"
B = DATA / "repeats-b.pt.trace.json.gz"


@pytest.fixture(scope="module")
def side_a():
    return side_of(open_trace(A, cache=False), "A")


@pytest.fixture(scope="module")
def side_b():
    return side_of(open_trace(B, cache=False), "B")


def test_diff_against_itself_is_all_zero(side_a):
    result = compare(side_a, side_a)
    assert result["significance"] == "|delta| > 2 x pooled repeat std"
    assert [r["stage"] for r in result["stages"]] == ["preprocess", "prefill", "sam", "clip", "projector",
                                                       "llm_prefill", "decode", "decode_step"]
    for r in result["stages"]:
        assert r["delta_ns"] == 0 and r["delta_kernels"] == 0
        assert r["significant"] is (False if r["noise_std_ns"] is not None else None)
    assert all(k["delta_ns"] == 0 for k in result["kernels"])


def test_diff_a_to_b(side_a, side_b):
    result = compare(side_a, side_b)
    assert result["unit"] == "per request (mean over requests)"
    rows = {r["stage"]: r for r in result["stages"]}
    # kernels per request, by hand: sam 2 views x 6 -> 12 layers x (matmul, gelu); decode 8 -> 12 steps x 7
    assert (rows["sam"]["a_kernels"], rows["sam"]["b_kernels"]) == (24, 48)
    assert (rows["decode_step"]["a_kernels"], rows["decode_step"]["b_kernels"]) == (56, 84)
    assert rows["clip"]["delta_kernels"] == 0 and rows["llm_prefill"]["delta_kernels"] == 0
    # twice the sam work takes about twice the time; 1.5x the decode steps about 1.5x (longer context too)
    assert 1.9 < rows["sam"]["b_ns"] / rows["sam"]["a_ns"] < 2.1
    assert 1.45 < rows["decode"]["b_ns"] / rows["decode"]["a_ns"] < 1.6
    assert rows["sam"]["significant"] and rows["decode"]["significant"] and rows["prefill"]["significant"]
    # the unchanged stages: their change is within the run-to-run noise
    for stage in ("clip", "llm_prefill"):
        assert rows[stage]["significant"] is False, rows[stage]
        assert abs(rows[stage]["delta_ns"]) <= 2 * rows[stage]["noise_std_ns"]
    # delta_pct is exact arithmetic on the two means
    sam = rows["sam"]
    assert sam["delta_pct"] == pytest.approx(100 * (sam["b_ns"] - sam["a_ns"]) / sam["a_ns"])
    # the kernels that moved most are listed by |delta| and their deltas are b - a
    deltas = [abs(k["delta_ns"]) for k in result["kernels"]]
    assert deltas == sorted(deltas, reverse=True) and deltas[0] > 0
    assert all(k["delta_ns"] == k["b_ns"] - k["a_ns"] for k in result["kernels"])


def test_no_repeats_means_unknown_significance(shared):
    trace = shared / "fixtures/nsys/nvtx-features-2025.3.sqlite"
    side = side_of(open_trace(trace, cache=False), "A")
    result = compare(side, side)
    assert result["significance"] == "fewer than 2 repeats of a page: significance unknown"
    assert all(r["significant"] is None and r["delta_ns"] == 0 for r in result["stages"])


def test_cli_table_and_json(capsys):
    code, out, _ = run(capsys, "diff", str(A), str(B), "--no-cache")
    assert code == 0
    sam = next(line for line in out.splitlines() if line.startswith("sam "))
    assert sam.split()[-1] == "yes" and "24 → 48" in sam
    code, out, _ = run(capsys, "diff", str(A), str(A), "--json", "--no-cache")
    assert code == 0
    doc = json.loads(out)
    assert {r["stage"]: r["delta_ns"] for r in doc["stages"]}["sam"] == 0
    decode = {r["stage"]: r for r in doc["stages"]}["decode"]
    assert decode["a_wall_ns"] == decode["b_wall_ns"] > decode["a_busy_ns"] > 0
    assert doc["throughput"]["speedup"] == 1.0
    assert all(p["achieved_ns"] == 0 for p in doc["predicted"])


def test_different_models_refused_with_one_line(tmp_path, capsys):
    other = tmp_path / "other.pt.trace.json.gz"
    shutil.copy(B, other)
    manifest = json.loads((DATA / "repeats-b.json").read_text())
    manifest["model"]["preset"] = "tiny"
    (tmp_path / "other.json").write_text(json.dumps(manifest))
    code, out, err = run(capsys, "diff", str(A), str(other), "--no-cache")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "Error: A (repeats-a.pt.trace.json.gz) and B (other.pt.trace.json.gz) ran different models "
        "(preset kineto-fixture vs tiny): a diff would compare unlike work; pass --force to diff them anyway"]
    code, out, err = run(capsys, "diff", str(A), str(other), "--force", "--no-cache")
    assert code == 0 and "ran different models" in err and out.startswith("A: ")


def test_manifest_against_no_manifest_refused(shared, capsys):
    plain = shared / "fixtures/nsys/tiny-2025.3.sqlite"
    code, out, err = run(capsys, "diff", str(A), str(plain), "--no-cache")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("Error: A (repeats-a.pt.trace.json.gz) is a DeepSeek-OCR capture (preset kineto-fixture) "
                          "but B (tiny-2025.3.sqlite) has no dsocr manifest")


def test_missing_trace(tmp_path, capsys):
    code, out, err = run(capsys, "diff", str(tmp_path / "nope.sqlite"), str(A), "--no-cache")
    assert code == 3 and len(err.splitlines()) == 1 and "no such file" in err


def _with_official_manifest(source, folder, name, steps):
    """Copy a repeats capture with a DeepSeek-OCR manifest beside it (one gundam page workload, `steps` tokens)."""
    from dsocr_perf.dsocr.config import load_preset
    from dsocr_perf.dsocr.workload import workload_shapes

    trace = folder / f"{name}.pt.trace.json.gz"
    shutil.copy(source, trace)
    manifest = json.loads(source.with_name(source.name.replace(".pt.trace.json.gz", ".json")).read_text())
    workload = workload_shapes(1280, 1700, "gundam", 12, 9).to_dict()
    workload.update(generated_tokens=steps, decode_kv_lengths=[workload["prompt_tokens"] + i for i in range(steps)])
    manifest["model"] = {"preset": "official", "config": load_preset("official").to_dict(), "dtype": "bfloat16"}
    manifest["workload"] = workload
    for page in manifest["pages"]:
        page["workload"] = workload
    (folder / f"{name}.json").write_text(json.dumps(manifest))
    return trace, manifest


def test_flops_and_mfu_deltas(tmp_path):
    """With manifests, FLOPs per request come from dsocr_perf.analyze.metrics: the same page workload gives the same
    sam FLOPs; 12 instead of 8 decode steps add exactly the 4 extra steps' FLOPs."""
    from dsocr_perf.analyze.metrics.flops import stage_metrics

    a_path, a_manifest = _with_official_manifest(A, tmp_path, "a", 8)
    b_path, b_manifest = _with_official_manifest(B, tmp_path, "b", 12)
    result = compare(side_of(open_trace(a_path, cache=False), "A"), side_of(open_trace(b_path, cache=False), "B"))
    rows = {r["stage"]: r for r in result["stages"]}
    assert rows["sam"]["delta_flops"] == 0 and rows["sam"]["a_flops"] > 0
    per_request = {}
    for label, path, manifest in (("a", a_path, a_manifest), ("b", b_path, b_manifest)):
        metrics, _ = stage_metrics((open_trace(path, cache=False)).polars("stages"), manifest)
        per_request[label] = {r["name"]: r for r in metrics}
    assert rows["decode"]["a_flops"] == pytest.approx(per_request["a"]["decode"]["flops"] / 6)
    assert rows["decode"]["b_flops"] == pytest.approx(per_request["b"]["decode"]["flops"] / 6)
    assert rows["decode"]["delta_flops"] == pytest.approx(rows["decode"]["b_flops"] - rows["decode"]["a_flops"])
    assert rows["decode"]["delta_flops_pct"] > 50  # 1.5x the steps, each at a longer context
    assert rows["sam"]["delta_mfu"] == pytest.approx(rows["sam"]["b_mfu"] - rows["sam"]["a_mfu"])
    assert rows["sam"]["b_mfu"] < rows["sam"]["a_mfu"]  # same FLOPs in about twice the time
