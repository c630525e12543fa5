"""Dataset statistics over `request` ranges, on real H100 captures.

tests/data/repeats-a.pt.trace.json.gz (PyTorch profiler, made by tests/data/capture_repeats_kineto.py):
2 pages x 3 repeats = 6 requests; each request runs sam on two view batches of 6 matmul+gelu
layers (24 kernels) and 8 decode steps of 7 kernels (3 matmuls, 2 casts, softmax, cat: 56).
"""
import json
import math
import statistics

import pytest
from cli_helper import run_analyze as run

from dsocr_perf.analyze.out.dataset import dataset_stats
from dsocr_perf.analyze.trace import open_trace

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def repeats():
    return open_trace(DATA / "repeats-a.pt.trace.json.gz", cache=False)


@pytest.fixture(scope="module")
def stats(repeats):
    return dataset_stats(repeats)


def test_requests_pages_and_repeats(stats):
    assert stats.requests.height == 6
    assert stats.has_manifest and stats.max_repeats == 3
    assert stats.requests["page"].to_list() == ["p1.png"] * 3 + ["p2.png"] * 3
    assert stats.requests["repeat"].to_list() == [0, 1, 2, 0, 1, 2]
    assert stats.requests["tokens"].to_list() == [8] * 6  # the manifest's generated_tokens


def test_kernel_counts_per_request_are_the_workload(stats):
    per = {(r["request"], r["stage"]): r for r in stats.per_request.iter_rows(named=True)}
    for request in range(6):
        assert per[(request, "sam")]["kernels"] == 2 * 6 * 2      # 2 view batches x 6 layers x (matmul, gelu)
        assert per[(request, "sam")]["instances"] == 2
        assert per[(request, "decode_step")]["instances"] == 8
        assert per[(request, "decode_step")]["kernels"] == 8 * 7  # per step: 3 matmuls, 2 dtype casts, softmax, cat


def test_request_sums_add_up_to_the_stage_totals(repeats, stats):
    """Every stage instance lies in exactly one request: the per-request sums add up to range_table's."""
    totals = {r["name"]: r["inclusive_ns"] for r in (repeats).polars("stages").iter_rows(named=True)}
    for stage in ("prefill", "sam", "clip", "projector", "llm_prefill", "decode", "decode_step"):
        assert stats.per_request.filter(stats.per_request["stage"] == stage)["gpu_ns"].sum() == totals[stage]
        row = stats.overall.filter(stats.overall["stage"] == stage).row(0, named=True)
        assert row["n"] == 6
        assert row["mean_ns"] == pytest.approx(totals[stage] / 6)


def test_page_statistics_by_hand(stats):
    for page in ("p1.png", "p2.png"):
        values = {}
        for stage in ("sam", "decode"):
            xs = [r["gpu_ns"] for r in stats.per_request.iter_rows(named=True)
                  if r["page"] == page and r["stage"] == stage]
            assert len(xs) == 3
            row = stats.per_page.filter((stats.per_page["page"] == page) & (stats.per_page["stage"] == stage)).row(0, named=True)
            assert row["mean_ns"] == pytest.approx(statistics.mean(xs))
            assert row["std_ns"] == pytest.approx(statistics.stdev(xs))
            assert (row["min_ns"], row["max_ns"]) == (min(xs), max(xs))
            values[stage] = statistics.stdev(xs)
    # pooled repeat std over two pages of 3 repeats = sqrt((s1^2 * 2 + s2^2 * 2) / 4)
    s = {p: stats.per_page.filter((stats.per_page["page"] == p) & (stats.per_page["stage"] == "sam"))["std_ns"][0]
         for p in ("p1.png", "p2.png")}
    pooled = stats.overall.filter(stats.overall["stage"] == "sam")["repeat_std_ns"][0]
    assert pooled == pytest.approx(math.sqrt((s["p1.png"] ** 2 + s["p2.png"] ** 2) / 2))
    # page p2 has half the rows of p1: its sam is faster, and the spread between pages is far above the repeat noise
    mean = {p: stats.per_page.filter((stats.per_page["page"] == p) & (stats.per_page["stage"] == "sam"))["mean_ns"][0]
            for p in ("p1.png", "p2.png")}
    assert mean["p2.png"] < mean["p1.png"]
    assert mean["p1.png"] - mean["p2.png"] > 10 * pooled


def test_throughput(stats):
    t = stats.throughput
    wall_s = stats.requests["wall_ns"].sum() / 1e9
    assert t["generated_tokens"] == 48
    assert t["pages_per_s"] == pytest.approx(6 / wall_s)
    assert t["tokens_per_s"] == pytest.approx(48 / wall_s)
    decode_wall_s = stats.per_request.filter(stats.per_request["stage"] == "decode")["wall_ns"].sum() / 1e9
    assert t["decode_tokens_per_s"] == pytest.approx(48 / decode_wall_s)


def test_manifest_beside_the_trace(repeats):
    manifest = repeats.manifest
    assert manifest["schema"] == "dsocr-manifest/1" and len(manifest["pages"]) == 6


def test_nsys_start_end_request(shared):
    """The nsys fixture's 'request' is a start/end range ended on another thread: its stages still count."""
    trace = open_trace(shared / "fixtures/nsys/nvtx-features-2025.3.sqlite", cache=False)
    stats = dataset_stats(trace)
    assert stats.requests.height == 1 and not stats.has_manifest
    per = {r["stage"]: r for r in stats.per_request.iter_rows(named=True)}
    # nvtx_kern_sum.csv: dsocr:sam 48,993 ns in 12 kernels, dsocr:decode_step 128,357 ns in 32 kernels
    assert (per["sam"]["gpu_ns"], per["sam"]["kernels"]) == (48_993, 12)
    assert (per["decode_step"]["gpu_ns"], per["decode_step"]["instances"]) == (128_357, 8)
    assert stats.throughput["generated_tokens"] == 8  # no manifest: one token per decode_step


def test_cli_json_and_no_requests(shared, capsys):
    code, out, _ = run(capsys, "dataset", str(DATA / "repeats-a.pt.trace.json.gz"), "--json", "--no-cache")
    assert code == 0
    doc = json.loads(out)
    assert (doc["requests"], doc["pages"], doc["max_repeats"]) == (6, 2, 3)
    tiny = shared / "fixtures/nsys/tiny-2025.3.sqlite"
    code, out, err = run(capsys, "dataset", str(tiny), "--no-cache")
    assert code == 3 and out == ""
    assert err.splitlines() == [f"Error: {tiny} has no 'request' ranges: capture pages with dsocr-trace "
                                "(each page and repeat is one request range) to get dataset statistics"]
