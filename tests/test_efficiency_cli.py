"""The stage table's FLOP/MFU half and the decode_model view, on the real H100 example capture."""
import json
from pathlib import Path

import pytest
from cli_helper import run_analyze as analyze

EXAMPLE = Path(__file__).resolve().parents[1] / "traces" / "examples" / "h100-gundam.sqlite.gz"


def test_json_carries_work_and_rates(capsys):
    code, out, _ = analyze(capsys, str(EXAMPLE), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["workload"] == {"mode": "gundam", "tile_grid": [2, 3],
                                "views": [{"name": "tiles", "count": 6, "side": 640, "grid": 10},
                                          {"name": "global", "count": 1, "side": 1024, "grid": 16}],
                                "image_tokens": 903, "prompt_tokens": 913, "generated_tokens": 128}
    assert data["gpu"]["name"] == "NVIDIA H100 80GB HBM3" and data["gpu"]["peak_tflops"] == 989.4
    ranges = {r["name"]: r for r in data["ranges"]}
    decode = ranges["dsocr:decode"]
    # 128 steps at KV lengths 914..1041: 128 x 1,148,190,720 + 61,440 x sum(914..1041)
    assert decode["flops"] == 128 * 1_148_190_720 + 61_440 * sum(range(914, 1042))
    # rates are over busy time: TFLOP/s = flops / busy_s / 1e12; MFU % of 989.4
    assert decode["tflops"] == pytest.approx(decode["flops"] / (decode["busy_ns"] / 1e9) / 1e12)
    assert decode["mfu"] == pytest.approx(100 * decode["tflops"] / 989.4)
    # vision: 6 tiles x 325.62 GF + one 1024 view 976.91 GF of SAM (docs/deepseek-ocr-v1.md §9)
    assert ranges["dsocr:sam"]["flops"] / 1e9 == pytest.approx(6 * 325.62 + 976.91, abs=0.1)


def test_decode_model_view_grows_with_context(capsys):
    query = ("SELECT step, kv_length, sum(flops) AS flops FROM decode_model GROUP BY 1, 2 "
             "ORDER BY step LIMIT 2")
    code, out, _ = analyze(capsys, "sql", str(EXAMPLE), query, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["step"], r["kv_length"]) for r in rows] == [(0, 914), (1, 915)]
    assert [r["flops"] for r in rows] == [1_148_190_720 + 61_440 * 914, 1_148_190_720 + 61_440 * 915]


def test_decode_model_needs_a_manifest(capsys, shared):
    trace = shared / "fixtures" / "nsys" / "tiny-2025.3.sqlite"
    code, out, err = analyze(capsys, "sql", str(trace), "SELECT * FROM decode_model")
    assert code == 3 and err.startswith("Error: ") and "no dsocr manifest" in err
