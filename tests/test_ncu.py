"""Nsight Compute CSVs in the analysis (issue 16): the reader, the `measured` block, decode scaling, the padding
model, the `ncu` command, hostile CSVs, and the committed H100 example against a plain sum over its rows."""
from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from pathlib import Path

import ncu_csv as G
import pytest
from cli_helper import run_analyze as analyze
from hostile.harness import check

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.metrics import padding
from dsocr_perf.analyze.metrics.measured import BLOCK_KEYS, measure
from dsocr_perf.analyze.read.ncu import COLUMNS, read_ncu_csv, read_sidecar

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "traces" / "examples"
TRACE = EXAMPLES / "h100-gundam.sqlite.gz"
RANGES = EXAMPLES / "h100-gundam.ncu.csv.gz"
SIDECAR = EXAMPLES / "h100-gundam.ncu.json"
# The H100's kernel-replay run (main 26f6ede, 1-token page: every kernel of vision, prefill and decode step 0,
# 5,292 rows) with its ranges run and sidecar: the only real per-kernel export, kept (474 KB gzipped) so the split
# by kernel class and SAM's traffic finding are tested on real kernel names and counts.
KERNELS = REPO / "tests" / "data" / "ncu" / "kernels.ncu-kernels.csv.gz"
KERNEL_RANGES = REPO / "tests" / "data" / "ncu" / "kernels.ncu.csv.gz"
STAGES = ("sam", "clip", "projector", "llm_prefill", "decode_step")


def manifest_128() -> dict:
    """The example session's manifest: Gundam 2x3, 913 prompt tokens, 128 steps at KV 914..1041."""
    return json.loads(SIDECAR.read_text())["manifest"]


def sidecar_for(folder: Path, name: str, manifest: dict | None = None, total: int = 128, sampled=(0, 127),
                rows: dict | None = None) -> Path:
    path = folder / f"{name}.ncu.json"
    path.write_text(json.dumps({"schema": "dsocr-ncu/1", "name": name, "gpu": "NVIDIA H100 80GB HBM3",
                                "ncu": {"version": "2025.3.1.0"},
                                "decode_steps": {"total": total, "sampled_by_kernel_runs": list(sampled)},
                                "runs": [{"csv": k, "rows": v} for k, v in (rows or {}).items()],
                                "manifest": manifest if manifest is not None else manifest_128()}))
    return path


# ------------------------------------------------------------------------------------------------ the reader

def test_reader_reads_the_real_format(tmp_path):
    rows = [{"stage": "sam", "kernel": None, "gpu_time_ns": 134_519_424, "tensor_flops": 2_011_299_840_000,
             "dram_read_bytes": 7_682_106_368, "dram_write_bytes": 8_156_220_672},
            {"stage": "decode_step", "step": 127, "request": 0, "kernel": None, "gpu_time_ns": 5,
             "tensor_flops": 14_061_404_160, "dram_read_bytes": 1_225_591_296, "dram_write_bytes": 13_606_400}]
    run = read_ncu_csv(G.write(tmp_path / "r.ncu.csv", rows))
    assert run.mode == "app-range" and run.table.column_names == list(COLUMNS)
    got = run.table.to_pylist()
    assert [(r["stage"], r["request"], r["step"], r["kernel_name"], r["kernel_class"]) for r in got] == \
        [("sam", 0, None, None, None), ("decode_step", 0, 127, None, None)]
    assert [r["tensor_flops"] for r in got] == [2_011_299_840_000, 14_061_404_160]
    assert [r["dram_write_bytes"] for r in got] == [8_156_220_672, 13_606_400]
    assert got[0]["l2_bytes"] is None and got[0]["simt_flops"] is None      # not collected: null, not 0
    assert run.metrics == {"gpu_time_ns", "tensor_flops", "dram_read_bytes", "dram_write_bytes"}


def test_units_are_converted_to_base_units(tmp_path):
    rows = [{"stage": "clip", "kernel": "ampere_bf16_gemm", "gpu_time_ns": 2_500_000, "dram_read_bytes": 7_000,
             "tensor_flops": 3_000_000}]
    units = {"gpu_time_ns": ("usecond", 1_000), "dram_read_bytes": ("Kbyte", 1_000), "tensor_flops": ("M", 10**6)}
    row = read_ncu_csv(G.write(tmp_path / "k.csv", rows, units=units)).table.to_pylist()[0]
    assert (row["gpu_time_ns"], row["dram_read_bytes"], row["tensor_flops"]) == (2_500_000, 7_000, 3_000_000)
    assert row["kernel_class"] == "gemm" and row["kernel_name"] == "ampere_bf16_gemm"


def test_simt_flops_are_two_fma_plus_add_plus_mul(tmp_path):
    row = {"stage": "sam", "kernel": "vectorized_elementwise_kernel", "simt_ffma": 10, "simt_fadd": 3,
           "simt_fmul": 4, "simt_hfma": 5, "simt_hadd": 1, "simt_hmul": 2}
    run = read_ncu_csv(G.write(tmp_path / "s.ncu-simt.csv", [row], metrics=(), simt=True))
    assert run.table.column("simt_flops").to_pylist() == [2 * (10 + 5) + 3 + 4 + 1 + 2]
    assert run.table.column("tensor_flops").to_pylist() == [None]


def test_sidecar_beside_the_csv_by_stem(tmp_path):
    csv_path = G.write(tmp_path / "page.ncu-kernels.csv.gz", [{"stage": "sam", "kernel": "k"}], gz=True)
    sidecar_for(tmp_path, "page")
    found = read_sidecar(csv_path)
    assert found.total_steps == 128 and found.sampled_steps == [0, 127] and found.manifest["schema"]
    assert read_sidecar(G.write(tmp_path / "other.ncu.csv", [{"stage": "sam"}])) is None


# --------------------------------------------------------------------------- sums, parents, decode scaling

def synthetic_ranges() -> list[dict]:
    rows = []
    for i, stage in enumerate(("sam", "clip", "projector", "sam", "clip", "projector", "llm_prefill")):
        rows.append({"stage": stage, "kernel": None, "tensor_flops": 1_000_003 * (i + 1), "dram_read_bytes": 7 * i,
                     "dram_write_bytes": 11 * i + 1, "gpu_time_ns": 999})
    for step in range(128):
        rows.append({"stage": "decode_step", "step": step, "kernel": None, "tensor_flops": 13_000_000_007 + step,
                     "dram_read_bytes": 1_000 + step, "dram_write_bytes": 3, "gpu_time_ns": 77})
    return rows


def expected_sums(rows: list[dict], key: str) -> dict:
    out = dict.fromkeys(STAGES, 0)
    for r in rows:
        out[r["stage"]] += r[key]
    out["prefill"] = sum(out[s] for s in STAGES[:4])
    out["decode"] = out["decode_step"]
    return out


def test_stage_sums_and_parents_are_the_row_sums(tmp_path):
    rows = synthetic_ranges()
    m = measure([read_ncu_csv(G.write(tmp_path / "x.ncu.csv", rows))], manifest=manifest_128())
    for key in ("tensor_flops", "dram_read_bytes", "dram_write_bytes"):
        want = expected_sums(rows, key)
        for stage in ("sam", "clip", "projector", "llm_prefill", "prefill", "decode"):
            assert m.block(stage)[key] == want[stage], (stage, key)
    decode = m.block("decode")
    assert set(decode) == set(BLOCK_KEYS)
    # app-range: no kernel count, no kernel time (a range's span is not kernel time), nothing sampled or scaled
    assert (decode["mode"], decode["kernels"], decode["kernel_ns"], decode["sampled_steps"], decode["scaling"]) == \
        ("app-range", None, None, None, None)
    assert m.stages["prefill"].ranges == 7 and m.stages["decode"].ranges == 128 and len(m.steps) == 128


def test_kernel_replay_decode_is_interpolated_in_kv_length(tmp_path):
    # steps 0 and 127 profiled (KV 914 and 1041), 2 kernels each; a value linear in KV is recovered exactly
    # for every step, a constant stays constant
    def value(kv):
        return 1_000_000 + 2_000 * kv
    rows = []
    for step, kv in ((0, 914), (127, 1041)):
        rows += [{"stage": "decode_step", "step": step, "kernel": "nvjet_gemm", "tensor_flops": value(kv) - 5,
                  "dram_read_bytes": 40, "gpu_time_ns": 10, "l2_bytes": 3},
                 {"stage": "decode_step", "step": step, "kernel": "flash_fwd_splitkv_kernel", "tensor_flops": 5,
                  "dram_read_bytes": 2, "gpu_time_ns": 1, "l2_bytes": 1}]
    path = G.write(tmp_path / "s.ncu-kernels.csv", rows,
                   metrics=("gpu_time_ns", "tensor_flops", "dram_read_bytes", "dram_write_bytes", "l2_bytes"))
    sidecar_for(tmp_path, "s")
    m = measure([read_ncu_csv(path)], read_sidecar(path))
    decode = m.block("decode")
    assert decode["tensor_flops"] == sum(value(kv) for kv in range(914, 1042))
    assert (decode["dram_read_bytes"], decode["kernels"], decode["kernel_ns"], decode["l2_bytes"]) == \
        (42 * 128, 2 * 128, 11 * 128, 4 * 128)
    assert decode["mode"] == "kernel" and decode["sampled_steps"] == [0, 127]
    assert "steps 0, 127 of 128" in decode["scaling"] and "KV length" in decode["scaling"]


def test_steps_outside_the_profiled_ones_take_the_nearest_value(tmp_path):
    manifest = manifest_128()
    rows = [{"stage": "decode_step", "step": s, "kernel": "gemv", "tensor_flops": v}
            for s, v in ((10, 100), (20, 200))]
    path = G.write(tmp_path / "n.ncu-kernels.csv", rows)
    m = measure([read_ncu_csv(path)], manifest=manifest)
    # steps 0-10 at 100, 11-19 on the line, 20-127 at 200
    assert m.block("decode")["tensor_flops"] == 11 * 100 + sum(100 + 10 * i for i in range(1, 10)) + 108 * 200


def test_without_a_manifest_scaling_uses_the_step_count_given(tmp_path):
    rows = [{"stage": "decode_step", "step": s, "kernel": "gemv", "tensor_flops": 7} for s in (0, 3)]
    run = read_ncu_csv(G.write(tmp_path / "t.csv", rows))
    assert measure([run], total_steps=10).block("decode")["tensor_flops"] == 70
    unscaled = measure([run]).block("decode")       # nothing says how many steps: the profiled ones only
    assert unscaled["tensor_flops"] == 14 and unscaled["scaling"] is None and unscaled["tensor_flops_ratio"] is None


def test_the_ranges_run_wins_and_kernel_runs_fill_what_it_lacks(tmp_path):
    ranges = [{"stage": "sam", "kernel": None, "tensor_flops": 100, "dram_read_bytes": 10, "dram_write_bytes": 1}]
    kernels = [{"stage": "sam", "kernel": "gemm", "tensor_flops": 90, "dram_read_bytes": 8, "dram_write_bytes": 0,
                "l2_bytes": 50, "gpu_time_ns": 7}] * 3
    m = measure([read_ncu_csv(G.write(tmp_path / "k.ncu-kernels.csv", kernels, metrics=tuple(G.METRICS))),
                 read_ncu_csv(G.write(tmp_path / "k.ncu.csv", ranges))])
    sam = m.block("sam")
    assert (sam["mode"], sam["tensor_flops"], sam["dram_read_bytes"]) == ("app-range", 100, 10)
    assert (sam["kernels"], sam["kernel_ns"], sam["l2_bytes"]) == (3, 21, 150)


def test_ratios_are_measured_over_analytic(tmp_path):
    rows = synthetic_ranges()
    m = measure([read_ncu_csv(G.write(tmp_path / "x.ncu.csv", rows))], manifest=manifest_128())
    decode = m.block("decode")
    analytic = 128 * 1_148_190_720 + 61_440 * sum(range(914, 1042))        # test_efficiency_cli's decode FLOPs
    assert decode["tensor_flops_ratio"] == pytest.approx(expected_sums(rows, "tensor_flops")["decode"] / analytic)
    nbytes = m.analytic.costs["decode"].bytes
    assert decode["dram_bytes_ratio"] == pytest.approx((sum(1_003 + s for s in range(128))) / nbytes)


# ------------------------------------------------------------------------------------------- padding model

def test_padding_model_of_one_step():
    from dsocr_perf.dsocr.config import ModelConfig
    c = ModelConfig.from_dict(manifest_128()["model"]["config"]).decoder
    work = padding.decode_step(c, 914)
    assert work.attention_flops == 12 * 4 * 914 * 1280 and work.linear_flops == 1_148_190_720
    # 8 rows of every linear layer; 64 query rows x 1024 keys (914 rounded up to 128-key blocks)
    assert work.predicted_flops == 8 * 1_148_190_720 + 12 * 4 * 64 * 1024 * 1280


def test_padding_model_predicts_the_measured_decode_ratio(capsys):
    code, out, _ = analyze(capsys, "ncu", RANGES, "--json")
    assert code == 0
    check = json.loads(out)["padding"]
    assert check["measured_ratio"] == pytest.approx(11.28, abs=0.01)       # the H100's app-range run
    assert check["predicted_ratio"] == pytest.approx(10.99, abs=0.01)
    assert abs(check["error_pct"]) < 10 and check["steps"] == 128


# -------------------------------------------------------------------------------------- the committed example

def plain_sums(path: Path) -> dict:
    """Per stage, the .sum columns added up with the csv module alone (independent of the reader)."""
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, data = rows[0], rows[2:]
    nvtx = next(i for i, h in enumerate(header) if "Push/Pop_Range" in h)
    out = {}
    for row in data:
        names = [n for n in re.findall(r'"dsocr:([a-z_]+):', row[nvtx]) if n in STAGES]
        totals = out.setdefault(names[-1], {})
        for key, metric in (("tensor_flops", "sm__ops_path_tensor_src_bf16_dst_fp32.sum"),
                            ("dram_read_bytes", "dram__bytes_read.sum"), ("dram_write_bytes", "dram__bytes_write.sum")):
            totals[key] = totals.get(key, 0) + int(row[header.index(metric)].replace(",", ""))
    out["prefill"] = {k: sum(out[s][k] for s in STAGES[:4]) for k in out["sam"]}
    out["decode"] = out["decode_step"]
    return out


def test_example_json_sums_equal_a_plain_sum_over_the_csv(capsys):
    code, out, _ = analyze(capsys, TRACE, "--ncu", RANGES, "--json")
    assert code == 0
    doc = json.loads(out)
    want = plain_sums(RANGES)
    by_stage = {r["stage"]: r for r in doc["ranges"]}
    for stage in ("prefill", "sam", "clip", "projector", "llm_prefill", "decode"):
        got = by_stage[stage]["measured"]
        assert set(got) == set(BLOCK_KEYS)
        for key, value in want[stage].items():
            assert got[key] == value, (stage, key)
    assert by_stage["preprocess"]["measured"] is None                     # ncu profiles no preprocess range
    assert want["decode"]["tensor_flops"] == 1_743_991_603_200 and want["sam"]["tensor_flops"] == 3_003_153_121_280
    decode = by_stage["decode"]
    # issued MFU: the hardware's tensor FLOPs over the trace's busy time and the H100's 989.4 TFLOP/s
    assert decode["measured"]["mfu_issued_busy_pct"] == pytest.approx(
        100 * want["decode"]["tensor_flops"] / (decode["busy_ns"] / 1e9) / 989.4e12)
    assert decode["measured"]["tensor_flops_ratio"] == pytest.approx(want["decode"]["tensor_flops"] / decode["flops"])


def test_csvs_beside_the_trace_are_found_and_can_be_left_out(capsys):
    code, out, _ = analyze(capsys, TRACE, "--json")
    doc = json.loads(out)
    assert code == 0 and any("found beside the trace" in n for n in doc["notes"])
    assert doc["ranges"][1]["measured"]["mode"] == "app-range"
    code, out, _ = analyze(capsys, TRACE, "--json", "--no-ncu")
    doc = json.loads(out)
    assert code == 0 and all(r["measured"] is None for r in doc["ranges"])     # the key is always there
    assert not any("Nsight Compute" in n for n in doc["notes"])


def test_stage_table_shows_measured_beside_the_model(capsys):
    code, out, _ = analyze(capsys, TRACE)
    assert code == 0 and "measured by Nsight Compute beside the model" in out
    line = next(x for x in out.splitlines() if x.startswith("dsocr:decode ") and "app-range" in x)
    assert "1,744.0" in line and "11.277" in line


def test_ncu_command_without_a_trace(capsys):
    code, out, _ = analyze(capsys, "ncu", RANGES)
    assert code == 0
    assert "135 ranges" in out and "decode steps (128 profiled; every step in --json)" in out
    decode = next(x for x in out.splitlines() if x.startswith("decode "))
    assert decode.split()[1:3] == ["128", "1,744.0"]
    assert "padding model" in out and "findings" in out and "sam moves 1.46x" in out


def test_ncu_json_is_one_contract(capsys):
    code, out, _ = analyze(capsys, "ncu", KERNEL_RANGES, KERNELS, "--json")
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(c))
    assert code == 0 and doc["schema"] == "dsocr-ncu-analysis/1"
    assert all(set(s["measured"]) == set(BLOCK_KEYS) for s in doc["stages"])
    assert len({frozenset(c) for c in doc["classes"]}) == 1 and len({frozenset(s) for s in doc["steps"]}) == 1
    sam = {c["kernel_class"]: c for c in doc["classes"] if c["stage"] == "sam"}
    # SAM's DRAM traffic kernel by kernel: 1.35x the model, most of it in elementwise (copy) kernels
    dram = sum(c["dram_read_bytes"] + c["dram_write_bytes"] for c in sam.values())
    assert dram / 17_658_592_256 == pytest.approx(1.35, abs=0.01)
    assert sam["elementwise"]["dram_share_frac"] > 0.6 and sam["gemm"]["tensor_flops_ratio"] == pytest.approx(1.002,
                                                                                                              abs=1e-3)
    decode = {c["kernel_class"]: c for c in doc["classes"] if c["stage"] == "decode_step"}
    assert decode["gemm"]["tensor_flops_ratio"] == pytest.approx(8.30, abs=0.01)
    assert decode["attention"]["tensor_flops_ratio"] == pytest.approx(64 * 1024 / 914)   # the padding model, exactly
    assert any(f.startswith("sam moves") and "copy kernels" in f for f in doc["findings"])
    stages = {s["stage"]: s for s in doc["stages"]}
    assert stages["sam"]["measured"]["kernels"] == 752 and stages["decode"]["measured"]["kernels"] == 1080


def test_ncu_command_without_a_sidecar_says_measured_only(capsys, tmp_path):
    lone = tmp_path / "lone.csv.gz"
    shutil.copy(RANGES, lone)
    code, out, _ = analyze(capsys, "ncu", lone)
    assert code == 0 and "measured numbers only" in out
    assert "3,003.2" in next(x for x in out.splitlines() if x.lstrip().startswith("sam"))


# ------------------------------------------------------------------------------------------- hostile CSVs

def good_csv(tmp_path: Path, name: str = "h.ncu.csv") -> Path:
    return G.write(tmp_path / name, synthetic_ranges()[:9])


def test_hostile_truncated_mid_row(capsys, tmp_path):
    path = good_csv(tmp_path)
    path.write_bytes(path.read_bytes()[:-25])
    check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))


def test_hostile_truncated_between_rows(capsys, tmp_path):
    path = good_csv(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))
    sidecar_for(tmp_path, "h", rows={"h.ncu.csv": 9})
    result = check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))
    assert "says the run wrote 9" in result.error


def test_hostile_truncated_gzip(capsys, tmp_path):
    path = tmp_path / "g.ncu.csv.gz"
    path.write_bytes(RANGES.read_bytes()[:5000])
    check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))


@pytest.mark.parametrize("unit", ["furlong", "Mbyte/s", "%"])
def test_hostile_wrong_units(capsys, tmp_path, unit):
    path = G.write(tmp_path / "u.csv", synthetic_ranges()[:3], units={"dram_read_bytes": (unit, 1)})
    result = check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))
    assert "dram__bytes_read.sum" in result.error and repr(unit) in result.error


@pytest.mark.parametrize("drop", ["ID", "Kernel Name", G.NVTX, "metrics"])
def test_hostile_missing_columns(capsys, tmp_path, drop):
    path = good_csv(tmp_path)
    rows = list(csv.reader(path.read_text().splitlines()))
    keep = [i for i, h in enumerate(rows[0]) if (h != drop if drop != "metrics" else i < len(G.LEAD))]
    with path.open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([[r[i] for i in keep] for r in rows])
    check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage\x80\x81" * 50, b"ID,Kernel Name\n",
                                     b'"ID","Kernel Name","thread Domain:Push/Pop_Range:x","dram__bytes_read.sum"\n'
                                     b'"","","","byte"\n'],
                         ids=["empty", "not-utf8", "no-units-row", "header-only"])
def test_hostile_content(capsys, tmp_path, content):
    path = tmp_path / "c.ncu.csv"
    path.write_bytes(content)
    check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))


def test_hostile_text_where_a_number_belongs(capsys, tmp_path):
    path = good_csv(tmp_path)
    text = path.read_text().replace('"1,000,003"', '"1,0x0,003"')
    path.write_text(text)
    result = check(capsys, "ncu", path, code=3, watch=[tmp_path], names=str(path))
    assert "not a number" in result.error


def test_hostile_paths_and_misuse(capsys, tmp_path):
    check(capsys, "ncu", tmp_path / "absent.csv", code=3, names=str(tmp_path / "absent.csv"))
    check(capsys, "ncu", tmp_path, code=3, names=str(tmp_path))
    check(capsys, "ncu", code=2)
    a, b = good_csv(tmp_path, "a.csv"), good_csv(tmp_path, "b.csv")
    check(capsys, "ncu", a, b, code=2)                                        # two ranges runs: which counts?
    check(capsys, TRACE, "--ncu", a, "--no-ncu", code=2)


def test_hostile_csv_given_to_a_trace_is_one_error(capsys, tmp_path):
    path = tmp_path / "bad.ncu.csv"
    path.write_bytes(b"\x00\x01\x02 not a csv \xff")
    check(capsys, TRACE, "--ncu", path, code=3, watch=[tmp_path, EXAMPLES], names=str(path))


def test_reader_error_is_a_trace_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(TraceError, match="empty"):
        read_ncu_csv(path)


def test_a_sampled_kernel_run_beside_a_trace_is_scaled_in_its_json(capsys, tmp_path):
    trace = tmp_path / "page.sqlite.gz"
    shutil.copy(TRACE, trace)
    rows = [{"stage": "decode_step", "step": step, "kernel": "nvjet_gemm", "tensor_flops": flops, "dram_read_bytes": 5,
             "dram_write_bytes": 1, "gpu_time_ns": 9} for step, flops in ((0, 1_000), (127, 1_127))]
    G.write(tmp_path / "page.ncu-kernels.csv.gz", rows, gz=True)
    code, out, _ = analyze(capsys, trace, "--json", "--ranges", "all")
    doc = json.loads(out)
    by_stage = {r["stage"]: r for r in doc["ranges"]}
    decode = by_stage["decode"]["measured"]
    assert code == 0 and decode["mode"] == "kernel" and decode["sampled_steps"] == [0, 127]
    assert decode["tensor_flops"] == sum(1_000 + (kv - 914) for kv in range(914, 1042))   # KV from the trace
    assert (decode["kernels"], decode["kernel_ns"]) == (128, 9 * 128) and "interpolated" in decode["scaling"]
    assert by_stage["decode_step"]["measured"] == decode
    assert by_stage["sam"]["measured"] is None and by_stage["prefill"]["measured"] is None   # no vision rows
    assert len({frozenset(r) for r in doc["ranges"]}) == 1


def test_a_damaged_csv_beside_a_trace_is_left_out_with_a_warning(capsys, tmp_path):
    trace = tmp_path / "page.sqlite.gz"
    shutil.copy(TRACE, trace)
    (tmp_path / "page.ncu.csv").write_bytes(b"\xff\xfe not a csv")
    result = check(capsys, trace, watch=[tmp_path])
    assert any("left out" in w and "--no-ncu" in w for w in result.warnings())
    assert "measured by Nsight Compute" not in result.out
