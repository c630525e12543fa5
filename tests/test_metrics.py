"""Per-stage metrics: hand-checkable rates, and the manifest's workload turned into per-stage work."""
import json
from pathlib import Path

import polars as pl
import pytest

from dsocr_perf.analyze.metrics import flops as metrics
from dsocr_perf.analyze.metrics.peaks import resolve_peaks
from dsocr_perf.dsocr import flops
from dsocr_perf.dsocr.config import load_preset
from dsocr_perf.dsocr.workload import workload_shapes

H100 = "NVIDIA H100 80GB HBM3"
OFFICIAL = load_preset("official")


def manifest(requests=1, generated=100, gpu=H100):
    w = workload_shapes(1654, 2339, "gundam", 9)            # A4 portrait: 2x3 tiles, L = 913
    kv = [w.prompt_tokens + 1 + i for i in range(generated)]
    wd = w.to_dict() | {"generated_tokens": generated, "decode_kv_lengths": kv}
    return {"schema": "dsocr-manifest/1", "workload": wd,
            "pages": [{"request": i, "image": {"path": "a4.png", "width": 1654, "height": 2339}, "workload": wd}
                      for i in range(requests)],
            "model": {"preset": "official", "config": OFFICIAL.to_dict(), "weights": "random", "seed": 0,
                      "dtype": "torch.bfloat16", "attention": "sdpa"},
            "environment": {"gpu_name": gpu}, "capture": {"warmup_pages": 1, "measured_pages": requests,
                                                          "repeats": 1}}


def ranges(requests=1, generated=100, **busy_ms):
    busy = {"prefill": 10, "sam": 6, "clip": 1.5, "projector": 0.05, "llm_prefill": 2, "decode": 500,
            "decode_step": 500, "preprocess": 0} | busy_ms
    count = {"sam": 2, "clip": 2, "projector": 2, "decode_step": generated}
    return pl.DataFrame([{"name": f"dsocr:{n}", "instances": requests * count.get(n, 1),
                          "inclusive_ns": int(ms * 1e6), "busy_ns": int(ms * 1e6)} for n, ms in busy.items()]
                        + [{"name": "aten::mm", "instances": 3, "inclusive_ns": 5, "busy_ns": 5}])


def by_name(rows):
    return {r["name"]: r for r in rows}


def test_rates_by_hand():
    h100 = resolve_peaks(H100)
    r = metrics.rates(1e12, 3.35e9, 1_000_000, 4_000_000, h100)   # 1 TFLOP, 3.35 GB in 1 ms busy, 4 ms wall
    assert r["tflop_per_s_busy"] == pytest.approx(1000)           # 1e12 / 1e-3 s = 1000 TFLOP/s
    assert r["mfu_busy_pct"] == pytest.approx(101.07, abs=0.01)    # 1000 / 989.4
    assert r["mfu_wall_pct"] == pytest.approx(25.27, abs=0.01)     # a quarter of it over the wall time
    assert r["gb_per_s_busy"] == pytest.approx(3350) and r["mbu_busy_pct"] == pytest.approx(100)
    assert r["mbu_wall_pct"] == pytest.approx(25)
    assert r["intensity_flop_per_byte"] == pytest.approx(298.5, abs=0.1)   # 1e12 / 3.35e9 > ridge 295.3
    # at 298.5 FLOP/B the roof is the compute peak: 1000 / 989.4
    assert r["roof_busy_pct"] == pytest.approx(101.07, abs=0.01)
    # at 100 FLOP/B the roof is bandwidth: 3,350 GB/s x 100 = 335 TFLOP/s; 100 TFLOP/s is 29.85% of it
    assert metrics.rates(1e11, 1e9, 1_000_000, None, h100)["roof_busy_pct"] == pytest.approx(29.85, abs=0.01)
    # the old names keep the busy-time values
    assert (r["tflops"], r["mfu"], r["gbs"], r["mbu"], r["intensity"]) == (
        r["tflop_per_s_busy"], r["mfu_busy_pct"], r["gb_per_s_busy"], r["mbu_busy_pct"], r["intensity_flop_per_byte"])
    assert metrics.rates(None, None, 1_000_000, 1_000_000, h100) == dict.fromkeys(metrics.RATE_KEYS)


def test_limiter_by_hand():
    from dsocr_perf.analyze.metrics.efficiency import limiter

    ridge = 295.3
    causes = {"gpu_other": 0, "sync": 0, "memcpy": 0, "launch": 0, "other_api": 0, "host": 0}
    row = {"wall_ns": 100, "kernels": 10, "roof_busy_pct": 20.0, "intensity_flop_per_byte": 1.0}
    # GPU idle 90% of the wall, mostly outside launch calls -> host; mostly in launch calls -> launch
    assert limiter(row | {"idle_causes_ns": causes | {"host": 60, "launch": 30}}, ridge) == "host"
    assert limiter(row | {"idle_causes_ns": causes | {"host": 20, "sync": 5, "launch": 65}}, ridge) == "launch"
    # idle 40% is not most of the wall: the roof decides
    busy = row | {"idle_causes_ns": causes | {"host": 40}}
    assert limiter(busy, ridge) == "latency"                                          # 20% of the roof
    assert limiter(busy | {"roof_busy_pct": 60.0}, ridge) == "memory"                 # 1 FLOP/B < ridge
    assert limiter(busy | {"roof_busy_pct": 60.0, "intensity_flop_per_byte": 400.0}, ridge) == "compute"
    # the GPU busy with other work is not idle: 60% gpu_other + 30% host -> decided by the roof
    assert limiter(row | {"idle_causes_ns": causes | {"gpu_other": 60, "host": 30}}, ridge) == "latency"
    assert limiter(busy | {"roof_busy_pct": None}, ridge) is None                     # no FLOP model
    assert limiter(row | {"kernels": 0, "idle_causes_ns": causes}, ridge) is None


def test_stage_rows_for_a_gundam_page_on_h100():
    rows, extras = metrics.stage_metrics(ranges(), manifest(), H100)
    r = by_name(rows)
    # prefill = vision 3,468,866,060,288 + llm_prefill 797,680,005,120 (attention counted L x L) FLOPs
    assert r["dsocr:prefill"]["flops"] == 3_468_866_060_288 + 797_680_005_120
    assert r["dsocr:prefill"]["tflop_per_s_busy"] == pytest.approx(426.65, abs=0.01)   # 4.2665e12 / 10 ms
    assert r["dsocr:prefill"]["mfu"] == pytest.approx(43.12, abs=0.01)          # / 989.4
    assert r["dsocr:sam"]["flops"] == 2_930_633_932_800                          # 6 tiles + global, doc §9
    assert r["dsocr:decode"]["flops"] == 100 * 1_148_190_720 + 61_440 * sum(range(914, 1014))
    assert r["dsocr:decode_step"]["flops"] == r["dsocr:decode"]["flops"]
    # batch-1 decode does ~1 FLOP per byte moved: far below the H100 ridge of 295 FLOP/B
    assert 0.9 < r["dsocr:decode"]["intensity_flop_per_byte"] < 1.1
    assert r["dsocr:prefill"]["intensity"] == pytest.approx(r["dsocr:prefill"]["flops"] / r["dsocr:prefill"]["bytes"])
    # decode: per token 1.1483 GB of weights + ~0.059 GB of KV cache (963 keys x 61,440 B);
    # 100 tokens in 500 ms -> 100 x 1.21 GB / 0.5 s = 241 GB/s = 7.2 % of 3,350 GB/s
    assert r["dsocr:decode"]["gbs"] == pytest.approx(r["dsocr:decode"]["bytes"] / 0.5 / 1e9)
    assert r["dsocr:decode"]["mbu"] == pytest.approx(r["dsocr:decode"]["gbs"] / 3350 * 100)
    assert 7.1 < r["dsocr:decode"]["mbu"] < 7.3
    for name in ("dsocr:preprocess", "aten::mm"):
        assert all(r[name][k] is None for k in ("flops", "bytes", "tflops", "mfu", "gbs", "mbu"))
    # model level = (prefill + decode) / (10 ms + 500 ms); sam etc. are inside prefill
    m = extras["model"]
    assert m["flops"] == r["dsocr:prefill"]["flops"] + r["dsocr:decode"]["flops"]
    assert m["busy_ns"] == 510_000_000
    assert m["mfu"] == pytest.approx(m["flops"] / 0.51 / 989.4e12 * 100)
    assert extras["workload"] == {"mode": "gundam", "tile_grid": [2, 3],
                                  "views": [{"name": "tiles", "count": 6, "side": 640, "grid": 10},
                                            {"name": "global", "count": 1, "side": 1024, "grid": 16}],
                                  "image_tokens": 903, "prompt_tokens": 913, "generated_tokens": 100}
    assert extras["gpu"]["name"] == H100 and extras["gpu"]["peak_tflops"] == 989.4
    assert extras["gpu"]["peak_gbs"] == 3350 and extras["attention_policy"] == "full"
    assert extras["messages"] == []
    json.dumps([rows, extras])


def test_plain_names_from_the_pytorch_profiler_match_too():
    df = ranges().with_columns(pl.col("name").str.replace("dsocr:", ""))
    rows, _ = metrics.stage_metrics(df, manifest(), H100)
    assert by_name(rows)["sam"]["flops"] == 2_930_633_932_800


def test_causal_half_policy_changes_only_the_causal_attention():
    full, _ = metrics.stage_metrics(ranges(), manifest(), H100)
    half, extras = metrics.stage_metrics(ranges(), manifest(), H100, policy="causal-half")
    assert extras["attention_policy"] == "causal-half"
    diff = by_name(full)["dsocr:llm_prefill"]["flops"] - by_name(half)["dsocr:llm_prefill"]["flops"]
    assert diff == 12 * 4 * 1280 * (913 * 913 - 913 * 914 // 2)
    assert by_name(half)["dsocr:llm_prefill"]["flops"] == 772_100_812_800           # doc: 772 GF
    assert by_name(full)["dsocr:decode"]["flops"] == by_name(half)["dsocr:decode"]["flops"]


def test_work_is_summed_over_requests():
    one, _ = metrics.stage_metrics(ranges(), manifest(), H100)
    three, extras = metrics.stage_metrics(ranges(requests=3), manifest(requests=3), H100)
    assert by_name(three)["dsocr:prefill"]["flops"] == 3 * by_name(one)["dsocr:prefill"]["flops"]
    assert extras["messages"] == []


def test_request_count_mismatch_is_said_and_scaled():
    rows, extras = metrics.stage_metrics(ranges(requests=2), manifest(requests=1), H100)
    assert by_name(rows)["dsocr:llm_prefill"]["flops"] == 2 * 797_680_005_120
    assert extras["messages"] == ["the trace has 2 prefill ranges but the manifest lists 1 request workloads: "
                                  "every prefill is counted at the mean listed workload"]


def test_decode_step_count_mismatch_is_said():
    _, extras = metrics.stage_metrics(ranges(generated=99), manifest(generated=100), H100)
    assert extras["messages"] == ["the trace has 99 decode_step ranges but the manifest records 100 decode steps"]


def test_unknown_gpu_keeps_flops_and_says_what_to_pass():
    rows, extras = metrics.stage_metrics(ranges(), manifest(gpu="Mystery GPU"), None)
    r = by_name(rows)["dsocr:prefill"]
    assert r["flops"] and r["tflops"] == pytest.approx(426.65, abs=0.01)
    assert r["mfu"] is None and r["mbu"] is None and r["roof_busy_pct"] is None
    assert extras["messages"] == ["GPU 'Mystery GPU' is not in the peaks table: MFU/MBU left empty; "
                                  "pass --peak-tflops and --peak-gbs to set them"]
    rows, extras = metrics.stage_metrics(ranges(), manifest(gpu="Mystery GPU"), None, peak_tflops=500, peak_gbs=2000)
    assert by_name(rows)["dsocr:prefill"]["mfu"] == pytest.approx(85.33, abs=0.01)   # 426.65 / 500
    assert extras["gpu"]["peak_tflops"] == 500 and extras["messages"] == []


def test_no_manifest_means_no_model_metrics_but_no_crash():
    rows, extras = metrics.stage_metrics(ranges(), None, H100)
    assert all(r["flops"] is None and r["mfu"] is None for r in rows)
    assert extras["workload"] is None and extras["model"] is None and extras["gpu"]["peak_tflops"] == 989.4
    assert extras["messages"] == ["the trace carries no dsocr manifest: FLOPs, bytes, MFU and MBU are left empty"]


def test_a_stand_in_model_config_is_reported_not_fatal():
    stand_in = json.loads((Path(__file__).parent / "data" / "repeats-a.json").read_text())
    rows, extras = metrics.stage_metrics(ranges(requests=6), stand_in, None)
    assert all(r["flops"] is None for r in rows)
    assert extras["gpu"]["name"] == H100                     # from the manifest's environment
    assert extras["messages"][0].startswith("no model metrics: the manifest's workload or model is not usable (the "
                                            "manifest's model.config is not a DeepSeek-OCR config")


def test_decode_model_rows_of_the_manifest():
    rows = metrics.decode_model_rows(manifest(generated=3))
    assert [r["kv_length"] for r in rows if r["layer"] == 0] == [914, 915, 916]
    assert sum(r["flops"] for r in rows if r["step"] == 0) == flops.decode_step_cost(OFFICIAL.decoder, 914).flops


def test_roofline_writes_png_and_svg_and_refuses_to_overwrite(tmp_path):
    from dsocr_perf.analyze.errors import OutputError, TraceError
    from dsocr_perf.analyze.out.roofline import plot_roofline
    rows, extras = metrics.stage_metrics(ranges(), manifest(), H100)
    paths = plot_roofline(rows, extras["gpu"], tmp_path / "roofline")
    assert [p.name for p in paths] == ["roofline.png", "roofline.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    assert "<svg" in svg and "llm_prefill" in svg and "decode_step" in svg
    with pytest.raises(OutputError, match="exists: pass --force"):
        plot_roofline(rows, extras["gpu"], tmp_path / "roofline")
    none, _ = metrics.stage_metrics(ranges(), None, H100)
    with pytest.raises(TraceError, match="nothing to put on a roofline"):
        plot_roofline(none, extras["gpu"], tmp_path / "empty")


def test_decode_model_view_in_duckdb():
    import duckdb
    import pyarrow as pa

    table = pa.Table.from_pylist(metrics.decode_model_rows(manifest(generated=3)), pa.schema(metrics.DECODE_MODEL_SCHEMA))
    con = duckdb.connect()
    con.register("decode_model", table)
    # KV bytes read per step grow by 12 layers x 5,120 B per extra key
    got = con.sql("SELECT step, sum(kv_read_bytes) FROM decode_model GROUP BY step ORDER BY step").fetchall()
    assert got == [(0, 914 * 61_440), (1, 915 * 61_440), (2, 916 * 61_440)]
    assert [n for n, _ in metrics.DECODE_MODEL_SCHEMA] == list(flops.DECODE_MODEL_COLUMNS)


def test_the_metrics_side_imports_neither_torch_nor_matplotlib():
    import subprocess
    import sys
    code = ("import sys, dsocr_perf.analyze.metrics.flops, dsocr_perf.analyze.metrics.peaks, "
            "dsocr_perf.analyze.metrics.efficiency, dsocr_perf.analyze.out.roofline, dsocr_perf.dsocr.flops; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], check=True)
    assert out.stdout.split() == ["False", "False"]
