"""dsocr-trace --ncu on the CPU: the real child session (tiny preset) under a stand-in ncu.

`fake_ncu` plays Nsight Compute: `--version`; a profile run records its options, runs the application, reads
the manifest the child wrote and writes a "report" with one row per stage range (application-range replay) or
per kernel of what the child's profiler windows let through (kernel replay); `--import REPORT --csv ...` prints
that report as ncu's raw CSV (a `==PROF==` line, the header, a units row, the rows).
FAKE_NCU_MODE: ok | perm (ERR_NVGPUCTRPERM before the app starts) | unsupported | nothing (no report) |
fewer (one range short). FAKE_NCU_APP=skip writes the session's manifest instead of running it (the real session
runs in the `kernel_run` fixture).
"""
import json
import sys
from pathlib import Path

import pytest
from stand_in import stand_in

from dsocr_perf.launch import cli, ncu, ncu_pass
from dsocr_perf.launch.errors import LaunchError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "launch/assets/sample_page.png"

FAKE_NCU = r'''#!{python}
import csv, json, os, subprocess, sys
args = sys.argv[1:]
mode = os.environ.get("FAKE_NCU_MODE", "ok")
NVTX = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
if args == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler")
    print("Version 2099.1.0.0 (build 1) (public-release)")
    sys.exit(0)
if args[0] == "--import":
    report = json.load(open(args[1]))
    print("==PROF== Disconnected")
    w = csv.writer(sys.stdout)
    w.writerow(["ID", "Process ID", NVTX, "Kernel Name", *report["metrics"]])
    w.writerow(["", "", "", "", *["nsecond" if "time" in m else "" for m in report["metrics"]]])
    for i, (stack, kernel) in enumerate(report["rows"]):
        w.writerow([i, 4242, stack, kernel, *[1000 + i for _ in report["metrics"]]])
    sys.exit(0)
app = next(i for i in range(len(args)) if args[i + 1:i + 3] == ["-m", "dsocr_perf.launch.child"])
options, app = args[:app], args[app:]
value = lambda name: options[options.index(name) + 1]
if mode == "perm":
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    sys.exit(1)
if mode == "unsupported":
    print("==ERROR== The selected device is not supported by this version of Nsight Compute")
    sys.exit(1)
spec = json.load(open(app[app.index("--spec") + 1]))
if os.environ.get("FAKE_NCU_APP") == "skip":   # quick: the manifest of a one-view page, as the session writes it
    code, steps = 0, spec["max_new_tokens"]
    profiled = [{"decode_steps": spec["ncu_decode_steps"]}] if spec["ncu_mode"] == "kernel" else "every range"
    json.dump({"pages": [{"workload": {"views": [{"name": "global"}], "generated_tokens": steps}}],
               "workload": {"generated_tokens": steps}, "environment": {"gpu_name": None, "ncu": "2099.1.0.0"},
               "capture": {"ncu": {"mode": spec["ncu_mode"], "profiled": profiled}}}, open(spec["manifest_out"], "w"))
else:
    code = subprocess.call(app)
manifest = json.load(open(spec["manifest_out"]))
rows = []
for p, page in enumerate(manifest["pages"]):
    stack = f"dsocr:request/{p}:dsocr:prefill:dsocr:"
    if value("--replay-mode") == "app-range":
        for _ in page["workload"]["views"]:
            rows += [(stack + s, s) for s in ("sam", "clip", "projector")]
        rows.append((stack + "llm_prefill", "llm_prefill"))
        rows += [(f"dsocr:request/{p}:dsocr:decode:dsocr:decode_step/{i}", "decode_step")
                 for i in range(page["workload"]["generated_tokens"])]
    else:
        for _ in page["workload"]["views"]:
            rows += [(stack + s, "ampere_kernel") for s in ("sam", "sam", "clip", "projector")]
        rows += [(stack + "llm_prefill", "gemm")] * 2
        for i in manifest["capture"]["ncu"]["profiled"][p]["decode_steps"]:
            rows += [(f"dsocr:request/{p}:dsocr:decode:dsocr:decode_step/{i}", "gemv")] * 3
if mode == "fewer":
    rows = rows[:-1]
for stack, _ in rows:
    print(f'==PROF== Profiling "{stack.rsplit(":", 1)[-1]}": 0%....50%....100% - 1 pass')
if mode == "nothing" or not rows:
    print("==WARNING== No kernels were profiled.")
else:
    report = {"options": options, "metrics": value("--metrics").split(","), "rows": rows}
    json.dump(report, open(value("--export"), "w"))
sys.exit(code)
'''


@pytest.fixture(scope="module")
def ncu_bin(tmp_path_factory):
    return stand_in(tmp_path_factory.mktemp("ncu"), "ncu", FAKE_NCU)


def ncu_trace(args, ncu_bin, capsys, monkeypatch, mode="ok"):
    """dsocr-trace --ncu in this process with the stand-in ncu (tiny preset, base mode: one view batch), the
    session's manifest made up by the stand-in."""
    monkeypatch.setenv("FAKE_NCU_MODE", mode)
    monkeypatch.setenv("FAKE_NCU_APP", "skip")
    code = cli.main([str(SAMPLE), "--ncu", "--preset", "tiny", "--mode", "base", "--device", "cpu",
                     "--ncu-path", str(ncu_bin), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory, ncu_bin):
    """One ranges run and one kernel-replay run of a 4-token page (decode steps 0 and 3 sampled)."""
    import subprocess
    out = tmp_path_factory.mktemp("ncu-out")
    run = subprocess.run([sys.executable, "-m", "dsocr_perf.launch.cli", str(SAMPLE), "--ncu-kernels", "--preset",
                          "tiny", "--mode", "base", "--device", "cpu", "--max-new-tokens", "4", "--name", "k",
                          "--out-dir", str(out), "--ncu-path", str(ncu_bin)],
                         capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "FAKE_NCU_MODE": "ok"})
    return out, run


def test_ranges_and_kernel_runs_write_the_csvs_and_the_sidecar(kernel_run):
    out, run = kernel_run
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["k.ncu-kernels.csv", "k.ncu.csv", "k.ncu.json"]
    side = json.loads((out / "k.ncu.json").read_text())
    assert side["schema"] == "dsocr-ncu/1" and side["ncu"]["version"] == "2099.1.0.0"
    ranges, kernels = side["runs"]
    # Ranges: base mode is one view batch: sam, clip, projector once, llm_prefill once, 4 decode steps = 8 rows.
    assert (ranges["replay"], ranges["rows"]) == ("app-range", 8)
    assert ranges["expected_by_stage"] == {"sam": 1, "clip": 1, "projector": 1, "llm_prefill": 1, "decode_step": 4}
    assert ranges["metrics"] == list(ncu.RANGE_METRICS) and ranges["report"] is None
    # Kernels: steps first and last of 4 = 0 and 3; the stand-in writes 3 rows per profiled decode step.
    assert kernels["replay"] == "kernel" and kernels["profiled"] == [{"decode_steps": [0, 3]}]
    assert kernels["rows_by_stage"] == {"sam": 2, "clip": 1, "projector": 1, "llm_prefill": 2, "decode_step": 6}
    assert side["decode_steps"] == {"total": 4, "sampled_by_kernel_runs": [0, 3]}
    assert "linear interpolation in KV length" in side["scaling"]["kernels"]
    assert side["scaling"]["ranges"].startswith("none")
    manifest = side["manifest"]
    assert manifest["workload"]["generated_tokens"] == 4 and manifest["environment"]["ncu"] == "2099.1.0.0"
    for r in side["runs"]:
        assert r["estimate_s"] > 0 and r["measured_s"] > 0
    # The command lines, as the stand-in received them.
    assert "--replay-mode app-range --range-filter yes:1: --nvtx" in ranges["command"]
    assert "--nvtx-include dsocr@sam/ --nvtx-include dsocr@clip/ --nvtx-include dsocr@projector/ " \
           "--nvtx-include dsocr@llm_prefill/ --nvtx-include dsocr@decode_step/" in ranges["command"]
    assert "--clock-control none" in ranges["command"] and "--profile-from-start" not in ranges["command"]
    assert "--replay-mode kernel --profile-from-start off" in kernels["command"]
    assert "lts__t_bytes.sum" in kernels["command"] and "lts__t_bytes.sum" not in ranges["command"]
    # The CSV is ncu's own export, units row included.
    csv_lines = (out / "k.ncu.csv").read_text().splitlines()
    assert csv_lines[1].startswith("ID,") and csv_lines[2].startswith(",,,,nsecond")
    # Progress: the estimate before, the measurement after, the time summary at the end.
    assert "estimate: ~" in run.stdout and "ncu cost: measured" in run.stdout and "time: total" in run.stdout
    assert "[ncu pass] measured pages (1 request(s), 4 generated tokens)" in run.stdout


def test_counter_permission_is_one_line(tmp_path, ncu_bin, capsys, monkeypatch):
    code, _, err = ncu_trace(["--out-dir", str(tmp_path), "--name", "p"], ncu_bin, capsys, monkeypatch, "perm")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "ERR_NVGPUCTRPERM" in err and "NVreg_RestrictProfilingToAdminUsers=0" in err
    assert "no partial files were written" in err and list(tmp_path.iterdir()) == []


def test_unsupported_gpu_is_one_line(tmp_path, ncu_bin, capsys, monkeypatch):
    code, _, err = ncu_trace(["--out-dir", str(tmp_path)], ncu_bin, capsys, monkeypatch, "unsupported")
    assert code == 2 and err.count("\n") == 1
    assert "cannot profile this GPU" in err and "Nsight Compute release that supports it" in err


def test_nothing_profiled_is_an_error_not_an_empty_table(tmp_path, ncu_bin, capsys, monkeypatch):
    code, _, err = ncu_trace(["--out-dir", str(tmp_path), "--name", "z", "--max-new-tokens", "2"], ncu_bin, capsys,
                             monkeypatch, "nothing")
    assert code == 2 and err.count("\n") == 1
    assert "ncu profiled nothing" in err and "dsocr@sam/" in err
    assert not (tmp_path / "z.ncu.csv").exists() and not (tmp_path / "z.ncu.json").exists()


def test_fewer_ranges_than_the_page_has_is_an_error(tmp_path, ncu_bin, capsys, monkeypatch):
    code, _, err = ncu_trace(["--out-dir", str(tmp_path), "--name", "f", "--max-new-tokens", "2"], ncu_bin, capsys,
                             monkeypatch, "fewer")
    assert code == 2 and err.count("\n") == 1
    assert "fewer stage ranges than the page has (decode_step 1 of 2)" in err
    assert (tmp_path / "f.partial.ncu.csv").exists() and not (tmp_path / "f.ncu.csv").exists()


def test_existing_ncu_outputs_need_force(tmp_path, ncu_bin, capsys, monkeypatch):
    (tmp_path / "r.ncu.csv").write_text("keep me")
    (tmp_path / "r.sqlite").write_text("an nsys export: not an ncu output, never touched")
    code, _, err = ncu_trace(["--out-dir", str(tmp_path), "--name", "r", "--max-new-tokens", "1"], ncu_bin, capsys,
                             monkeypatch)
    assert code == 2 and "r.ncu.csv" in err and "--force" in err
    assert (tmp_path / "r.ncu.csv").read_text() == "keep me"
    code, _, err = ncu_trace(["--out-dir", str(tmp_path), "--name", "r", "--max-new-tokens", "1", "--force",
                              "--keep-ncu-rep"], ncu_bin, capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.ncu-rep", "r.ncu.csv", "r.ncu.json", "r.sqlite"]
    assert (tmp_path / "r.sqlite").read_text().startswith("an nsys export")


def test_ncu_missing(tmp_path):
    with pytest.raises(LaunchError) as e:
        ncu.find_ncu(None, {"PATH": str(tmp_path)}, str(tmp_path))
    msg = str(e.value)
    assert msg.startswith("Nsight Compute (ncu) not found") and "--ncu-path /path/to/ncu" in msg
    assert "/usr/local/cuda*/bin" in msg and "/opt/nvidia/nsight-compute/*" in msg


def test_ncu_discovery_order(tmp_path):
    def fake(path, version):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho 'Version {version} (build 1)'\n")
        path.chmod(0o755)
        return path
    root = tmp_path / "root"
    fake(root / "usr/local/cuda-13.0/bin/ncu", "2025.3.1.0")
    fake(root / "opt/nvidia/nsight-compute/2024.1.0/ncu", "2024.1.0.0")
    assert ncu.find_ncu(None, {"PATH": ""}, str(root)).version == "2025.3.1.0"
    (root / "usr/local/cuda-13.0/bin/ncu").unlink()
    assert ncu.find_ncu(None, {"PATH": ""}, str(root)).found_by == "/opt/nvidia/nsight-compute/*"
    env_ncu = fake(tmp_path / "env/ncu", "1.0")
    assert ncu.find_ncu(None, {"NCU": str(env_ncu), "PATH": ""}, str(root)).version == "1.0"
    with pytest.raises(LaunchError, match="--ncu-path points to"):
        ncu.find_ncu(str(tmp_path / "nowhere"), {}, str(root))


def test_decode_step_sampling_words():
    assert ncu_pass.sampled_steps("first,last", 256) == [0, 255]
    assert ncu_pass.sampled_steps("last, 0, 16", 32) == [0, 16, 31]
    assert ncu_pass.sampled_steps("first,last", 1) == [0]
    assert ncu_pass.sampled_steps("all", 3) == [0, 1, 2]
    for bad, why in (("7", "does not exist"), ("middle", "not a step number"), (",", "at least one")):
        with pytest.raises(ValueError, match=why):
            ncu_pass.sampled_steps(bad, 4)


def test_bad_decode_steps_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--ncu", "--max-new-tokens", "4", "--ncu-decode-steps", "9"])
    assert e.value.code == 2 and "step 9 does not exist with --max-new-tokens 4" in capsys.readouterr().err


def test_estimates_by_hand():
    per = dict(ncu.TYPICAL_KERNELS)
    # Ranges, Gundam (2 view batches), 32 tokens: 2 x 3 + 1 + 32 = 39 ranges: 20 s + 39 x 1 s = 59 s.
    e = ncu.estimate(ncu_pass.RUNS["ranges"], [2], 2, 32, per, "x")
    assert (e.items, e.unit, round(e.seconds, 3)) == (39, "ranges", 59.0)
    # Kernels, same page, 2 sampled steps: vision 2 x (376 + 294 + 2) = 1,344 and llm_prefill 2,868 at 25 ms,
    # decode 2 x 1,080 = 2,160 at 41 ms: 18 + (1,344 + 2,868) x 0.025 + 2,160 x 0.041 = 18 + 105.3 + 88.56.
    e = ncu.estimate(ncu_pass.RUNS["kernels"], [2], 2, 32, per, "x")
    assert (e.items, round(e.seconds, 2)) == (1344 + 2868 + 2160, 211.86)


def test_raw_csv_reading_and_stage_checks():
    nvtx = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
    text = ("==PROF== Disconnected from process 1\n"
            f'"ID","Process ID","{nvtx}","Kernel Name"\n'
            '"","","",""\n'
            '"0","7","dsocr:request:dsocr:prefill:dsocr:sam","k"\n'
            '"1","7","dsocr:request:dsocr:decode:dsocr:decode_step","k"\n'
            '"2","7","","llm_prefill"\n')
    header, rows = ncu.read_raw_csv(text)
    assert header[0] == "ID" and [r[0] for r in rows] == ["0", "1", "2"]
    got = ncu.stage_counts(header, rows)
    assert got == {"sam": 1, "decode_step": 1, "llm_prefill": 1}
    want = ncu.expected_ranges({"pages": [{"workload": {"views": [{}, {}], "generated_tokens": 3}}]})
    assert want == {"sam": 2, "clip": 2, "projector": 2, "llm_prefill": 1, "decode_step": 3}
    assert ncu.missing_ranges(got, want) == "sam 1 of 2, clip 0 of 2, projector 0 of 2, decode_step 1 of 3"
    assert ncu.missing_ranges(want, want) is None


def test_failure_lines():
    assert ncu.failure("==ERROR== ERR_NVGPUCTRPERM - no permission", "1") == ncu.PERMISSION
    assert "refused a metric" in ncu.failure("==ERROR== Failed to find metric lts__t_bytez.sum", "1")
    assert ncu.failure("==PROF== Profiling ...\n==WARNING== No kernels were profiled.", "1") is None
