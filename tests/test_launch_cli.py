"""dsocr-trace end to end on the CPU: the real child session (tiny preset) under a stand-in nsys.

nsys cannot run without a GPU, so `fake_nsys` plays its part: `profile` records its options and
runs the application command (or, with FAKE_NSYS_APP=skip, writes the manifest the session would write), `export`
copies a real nsys export (fixtures/nsys/tiny-2025.3.sqlite); `profile --help` lists FAKE_NSYS_OPTIONS.
Everything else -- the child process, the manifest, the PyTorch profiler pass, the renames -- is real.
"""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from stand_in import stand_in

from dsocr_perf.dsocr.stages import MANIFEST_SCHEMA
from dsocr_perf.launch import cli
from dsocr_perf.launch.command import NSYS_PROFILE_OPTIONS
from dsocr_perf.launch.make_sample_page import HEIGHT, WIDTH
from dsocr_perf.launch.manifest import check_manifest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "launch/assets/sample_page.png"

FAKE_NSYS = r'''#!{python}
import os, shutil, subprocess, sys
args = sys.argv[1:]
mode = os.environ.get("FAKE_NSYS_MODE", "ok")
if args[0] == "--version":
    print("NVIDIA Nsight Systems version 2099.1.1.0-fake")
    sys.exit(0)
if args[:2] == ["profile", "--help"]:    # the options this nsys knows
    print("usage: nsys profile [<args>] [application] [<application args>]")
    for option in os.environ.get("FAKE_NSYS_OPTIONS", "--gpu-metrics-devices,--pytorch").split(","):
        print(f"   {option}=")
    sys.exit(0)
if args[0] == "profile" and args[1] in ("--gpu-metrics-devices=help", "--gpu-metrics-device=help"):
    if mode == "no-metrics-gpu":
        print("None of the installed GPUs support GPU Metrics")
        sys.exit(1)
    print("Possible --gpu-metrics-devices values are:")
    print("\t0: NVIDIA Fake GPU PCI[0000:00:00.0]")
    print("\tall: Select all supported GPUs")
    sys.exit(0)
if args[0] == "profile":
    i = 1
    while args[i].startswith("-"):
        i += 1
    options, app = args[1:i], args[i:]
    base = [o.split("=", 1)[1] for o in options if o.startswith("--output=")][0].removesuffix(".nsys-rep")
    if mode == "hang":     # a capture that never ends: the test interrupts dsocr-trace
        open(base + ".qdstrm", "w").write("raw")
        import time
        time.sleep(120)
    if mode == "fail":
        print("fake nsys: unable to load the CUDA injection library")
        sys.exit(1)
    if mode == "metrics-fail" and any(o.startswith("--gpu-metrics-device") for o in options):
        print("Error: GPU Metrics: insufficient privilege to sample GPU performance counters")
        sys.exit(1)
    if mode == "qdstrm":   # the session ran (its manifest appears) but the importer did not
        import json
        spec = json.load(open(app[app.index("--spec") + 1]))
        open(spec["manifest_out"], "w").write("{}")
        open(base + ".qdstrm", "w").write("raw")
        print("Importer error status: An unknown error occurred.")
        sys.exit(0)
    elif os.environ.get("FAKE_NSYS_APP") == "skip":   # quick: the manifest the session would write, from its spec
        import json
        spec = json.load(open(app[app.index("--spec") + 1]))
        capture = {k: spec[k] for k in ("gpu_metrics", "torch_ops_nvtx") if k in spec}
        open(spec["manifest_out"], "w").write(json.dumps({"capture": capture, "pages": []}))
        open(base + ".nsys-rep", "w").write("\n".join(options))
        code = 0
    else:
        code = subprocess.call(app)
        open(base + ".nsys-rep", "w").write("\n".join(options))
    sys.exit(code)
if args[0] == "export":
    out = [a.split("=", 1)[1] for a in args if a.startswith("--output=")][0]
    if "--type=parquetdir" in args:   # FAKE_NSYS_PARQUET: the tests folder, whose nsys_parquet.py writes one
        if not os.environ.get("FAKE_NSYS_PARQUET"):
            print("Unknown export type: parquetdir")
            sys.exit(1)
        sys.path.insert(0, os.environ["FAKE_NSYS_PARQUET"])
        from pathlib import Path
        from nsys_parquet import to_parquetdir
        to_parquetdir(Path(os.environ["FAKE_NSYS_SQLITE"]), Path(out))
        sys.exit(0)
    shutil.copy(os.environ["FAKE_NSYS_SQLITE"], out)
    sys.exit(0)
sys.exit(9)
'''


@pytest.fixture(scope="module")
def nsys_bin(tmp_path_factory):
    return stand_in(tmp_path_factory.mktemp("nsys"), "nsys", FAKE_NSYS)


def trace(args, nsys_bin, mode="ok", sqlite=None, cwd=REPO):
    env = {"PATH": "/usr/bin:/bin", "FAKE_NSYS_MODE": mode, "HOME": str(Path.home()),
           "FAKE_NSYS_SQLITE": str(sqlite or "/nonexistent")}
    return subprocess.run([sys.executable, "-m", "dsocr_perf.launch.cli", *args, "--nsys", str(nsys_bin)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def trace_here(args, nsys_bin, capsys):
    """dsocr-trace in this process (no child Python start-up): (exit code, stdout, stderr)."""
    code = cli.main([*args, "--nsys", str(nsys_bin)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def capture(tmp_path_factory, nsys_bin, shared_dir):
    """One full CPU capture: 1 page x 2 repeats, tiny preset, 3 decode tokens."""
    out = tmp_path_factory.mktemp("traces")
    run = trace([str(SAMPLE), "--preset", "tiny", "--mode", "tiny", "--max-new-tokens", "3", "--repeats", "2",
                 "--torch-decode-steps", "2", "--name", "cpu", "--out-dir", str(out), "--device", "cpu"],
                nsys_bin, sqlite=shared_dir / "fixtures/nsys/tiny-2025.3.sqlite")
    return out, run


@pytest.fixture(scope="module")
def shared_dir():
    from conftest import SHARED

    d = SHARED
    if not d.is_dir():
        pytest.skip("../shared is not beside the repository")
    return d


def test_capture_writes_every_output_under_its_final_name(capture):
    out, run = capture
    assert run.returncode == 0, run.stdout + run.stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith((".duckdb", ".wal")))
    assert names == ["cpu.json", "cpu.nsys-rep", "cpu.ops.md", "cpu.pt.trace.json.gz", "cpu.sqlite"]
    # The nsys pass got exactly the documented options, GPU metrics included (this nsys lists a GPU for them).
    assert (out / "cpu.nsys-rep").read_text().splitlines() == [
        *NSYS_PROFILE_OPTIONS, "--gpu-metrics-devices=all", "--gpu-metrics-frequency=2000",
        f"--output={out}/.cpu.tmp.nsys-rep"]
    # One progress line per phase, with elapsed time.
    for phase in ("capture (nsys profile", "export (nsys export", "profiler pass (PyTorch profiler",
                  "analysis (dsocr-analyze)"):
        assert f"] {phase}" in run.stdout and "done in" in run.stdout
    for child_phase in ("[nsys pass] model load", "[nsys pass] warm-up (1 page(s), one per tile grid, 3 decode steps)",
                        "[nsys pass] measured pages (2 request(s), 6 generated tokens)", "[torch pass] model load",
                        "[torch pass] profiled page(s)", "[torch pass] Chrome trace", "[torch pass] operator table"):
        assert child_phase in run.stdout
    # The closing time summary names every phase, the child's phases inside the launcher's.
    summary = run.stdout[run.stdout.index("] time: total "):]
    for line in ("  capture ", "(python + torch import ", "model load ", "warm-up ", "measured pages ", "  export ",
                 "  profiler pass ", "profiled page(s) ", "  analysis ", "  checks and writing "):
        assert line in summary, line
    assert "nsys 2099.1.1.0-fake at" in run.stdout
    assert "2 measured request(s) under nsys: mean" in run.stdout and "request 1 (page 0, repeat 1)" in run.stdout
    # The final analysis ran on the exported sqlite (the fixture: 5 matmuls in prefill).
    assert "prefill" in run.stdout


def test_manifest_schema_and_numbers(capture):
    out, _ = capture
    m = json.loads((out / "cpu.json").read_text())
    assert check_manifest(m) == []
    assert "missing key 'pages'" in check_manifest({k: v for k, v in m.items() if k != "pages"})
    assert m["schema"] == MANIFEST_SCHEMA
    # Mode tiny: one 512 px global view, 8x8 tokens + a newline per row + the separator = 73 image tokens.
    w = m["workload"]
    assert (w["image_width"], w["image_height"]) == (WIDTH, HEIGHT) == (1654, 2339)
    assert w["tile_grid"] == [1, 1] and w["image_tokens"] == 8 * 9 + 1 == 73
    assert w["prompt_tokens"] == 1 + 73 + w["text_tokens"]
    assert w["generated_tokens"] == 3
    assert w["decode_kv_lengths"] == [w["prompt_tokens"] + 1, w["prompt_tokens"] + 2, w["prompt_tokens"] + 3]
    assert [(p["request"], p["page"], p["repeat"]) for p in m["pages"]] == [(0, 0, 0), (1, 0, 1)]
    img = m["pages"][0]["image"]
    import hashlib
    assert img["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert m["model"]["preset"] == "tiny" and m["model"]["weights"] == "random" and m["model"]["seed"] == 0
    assert m["model"]["dtype"] == "float32" and m["model"]["config"]["decoder"]["hidden_size"] == 64
    assert m["model"]["engine"] == "faithful"
    assert m["capture"] == m["capture"] | {"warmup_pages": 1, "measured_pages": 1, "repeats": 2, "requests": 2,
                                          "ignore_eos": True, "max_new_tokens": 3, "warmup_decode_steps": 3}
    assert m["capture"]["gpu_metrics"] == {"enabled": True, "devices": "all", "frequency_hz": 2000}
    env = m["environment"]
    assert env["nsys"] == "2099.1.1.0-fake" and env["torch"].startswith("2.")
    assert "--repeats 2" in env["command"] and env["command"].startswith("dsocr-trace ")


def test_torch_trace_and_operator_table(capture):
    out, _ = capture
    with gzip.open(out / "cpu.pt.trace.json.gz", "rt") as f:
        chrome = json.load(f)
    names = {e.get("name") for e in chrome["traceEvents"]}
    assert {"request", "preprocess", "prefill", "sam", "clip", "projector", "llm_prefill", "decode",
            "decode_step"} <= names
    # The manifest rides in the trace metadata too.
    # --torch-decode-steps 2: the profiler pass decodes 2 tokens (the nsys pass 3).
    assert chrome["dsocr_manifest"]["workload"]["generated_tokens"] == 2   # stored as a JSON object
    ops = (out / "cpu.ops.md").read_text()
    # Stage table: one request (the torch pass measures each page once), two decode steps, and it says so.
    assert "| `request` | 1 |" in ops and "| `decode_step` | 2 |" in ops and "| `sam` | 1 |" in ops
    assert "vision and prefill in full and the first 2 of 3 decode steps (decode steps 0-1" in ops
    assert chrome["dsocr_manifest"]["capture"]["decode_steps_profiled"] == 2
    assert "## Stage `sam`" in ops and "aten::" in ops


def test_fast_engine_capture(tmp_path, nsys_bin, shared_dir, capsys, monkeypatch):
    """--engine fast reaches the child through the spec; the manifest says which engine ran."""
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(shared_dir / "fixtures/nsys/tiny-2025.3.sqlite"))
    code, out, err = trace_here([str(SAMPLE), "--preset", "tiny", "--mode", "tiny", "--max-new-tokens", "2",
                                 "--engine", "fast", "--name", "fast", "--out-dir", str(tmp_path), "--device", "cpu",
                                 "--no-torch-profiler", "--no-analyze"], nsys_bin, capsys)
    assert code == 0, out + err
    assert "max_new_tokens 2, ignore EOS, fast engine" in out
    m = json.loads((tmp_path / "fast.json").read_text())
    assert check_manifest(m) == [] and m["model"]["engine"] == "fast"
    w = m["workload"]
    assert w["generated_tokens"] == 2 and w["decode_kv_lengths"] == [w["prompt_tokens"] + 1, w["prompt_tokens"] + 2]


def test_existing_outputs_are_never_overwritten_without_force(capture, nsys_bin):
    out, _ = capture
    before = (out / "cpu.json").read_bytes()
    run = trace([str(SAMPLE), "--name", "cpu", "--out-dir", str(out), "--device", "cpu"], nsys_bin)
    assert run.returncode == 2
    assert run.stderr.startswith("Error: ") and "already exist" in run.stderr and "--force" in run.stderr
    assert "Traceback" not in run.stderr and (out / "cpu.json").read_bytes() == before


def test_one_existing_output_is_enough_to_refuse(tmp_path, nsys_bin, capsys):
    (tmp_path / "x.ops.md").write_text("keep me")
    code, _, err = trace_here([str(SAMPLE), "--name", "x", "--out-dir", str(tmp_path), "--device", "cpu"],
                              nsys_bin, capsys)
    assert code == 2 and "x.ops.md" in err
    assert (tmp_path / "x.ops.md").read_text() == "keep me"


def test_nsys_failure_shows_its_last_output(tmp_path, nsys_bin, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_MODE", "fail")
    code, _, err = trace_here([str(SAMPLE), "--name", "f", "--out-dir", str(tmp_path), "--device", "cpu"],
                              nsys_bin, capsys)
    assert code == 2
    assert err.startswith("Error: capture failed") and "nsys exit 1" in err and err.count("\n") == 1
    assert "unable to load the CUDA injection library" in err
    assert [p.name for p in tmp_path.iterdir()] == []   # nothing written, no temporaries left


def test_nsys_missing(tmp_path, capsys, monkeypatch):
    import glob
    if any(glob.glob(p) for p in ("/usr/local/cuda*/bin/nsys", "/opt/nvidia/nsight-*/*/*/nsys",
                                  "/opt/nvidia/nsight-*/*/host/*/nsys")):
        pytest.skip("this machine has nsys installed")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("NSYS", raising=False)
    assert cli.main([str(SAMPLE), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Nsight Systems (nsys) not found") and err.count("\n") == 1


def test_no_gpu_is_one_clear_line(tmp_path, nsys_bin):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = trace([str(SAMPLE), "--out-dir", str(tmp_path)], nsys_bin)
    assert run.returncode == 2
    assert run.stderr.startswith("Error: no CUDA GPU visible to PyTorch") and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1


def test_bad_images(tmp_path, nsys_bin, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    listing = tmp_path / "pages.txt"
    listing.write_text(f"{SAMPLE}\nmissing_page.png\n")
    cases = {str(not_image): "not an image file", str(tmp_path / "absent.png"): "no such file or folder",
             str(empty): "holds no images", str(listing): "missing_page.png: no such image file"}
    for image, expected in cases.items():
        code, _, err = trace_here([image, "--out-dir", str(tmp_path / "out")], nsys_bin, capsys)
        assert code == 2, image
        assert err.startswith("Error: ") and expected in err and err.count("\n") == 1, err


def test_folder_and_list_inputs(tmp_path):
    from dsocr_perf.launch.images import list_images
    folder = tmp_path / "pages"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in list_images(str(folder))] == ["a.jpg", "b.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# pages\npages/b.png\n\n/abs/c.png\n")
    assert list_images(str(listing)) == [folder / "b.png", Path("/abs/c.png")]


def test_importer_fallback_keeps_partials_when_it_fails(tmp_path, nsys_bin, shared_dir):
    # The stand-in nsys leaves only a .qdstrm and no QdstrmImporter sits beside it.
    run = trace([str(SAMPLE), "--preset", "tiny", "--mode", "tiny", "--max-new-tokens", "1", "--name", "q",
                 "--out-dir", str(tmp_path), "--device", "cpu", "--no-torch-profiler"], nsys_bin, mode="qdstrm")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "nsys left only" in run.stderr and "no QdstrmImporter was found" in run.stderr
    assert "kept partial files" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.partial.json", "q.partial.qdstrm"]


def test_name_is_checked():
    with pytest.raises(SystemExit):
        cli.parse_args(["--name", "../escape"])
    args = cli.parse_args([])
    assert args.random_weights and args.ignore_eos and args.image.endswith("sample_page.png")


def test_torch_decode_steps_option(capsys):
    assert cli.parse_args([]).torch_decode_steps == cli.TORCH_DECODE_STEPS == 8
    assert cli.parse_args(["--torch-decode-steps", "all"]).torch_decode_steps is None
    assert cli.parse_args(["--torch-max-new-tokens", "3"]).torch_decode_steps == 3   # the older name
    for bad in ("0", "some"):
        with pytest.raises(SystemExit):
            cli.parse_args(["--torch-decode-steps", bad])
        assert "give a number of steps (at least 1) or 'all'" in capsys.readouterr().err


def test_sigterm_keeps_the_partial_capture(tmp_path, nsys_bin):
    import signal
    import time
    env = {"PATH": "/usr/bin:/bin", "FAKE_NSYS_MODE": "hang"}
    proc = subprocess.Popen([sys.executable, "-m", "dsocr_perf.launch.cli", str(SAMPLE), "--name", "h", "--out-dir",
                             str(tmp_path), "--device", "cpu", "--nsys", str(nsys_bin)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.time() + 60
    while not (tmp_path / ".h.tmp.qdstrm").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 2
    assert err.startswith("Error: interrupted during the capture; kept partial files:") and "h.partial.qdstrm" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.partial.qdstrm"]


def test_warmup_takes_one_page_per_tile_grid():
    from dsocr_perf.launch.child import warmup_requests
    pages = [{"path": "a", "width": 1654, "height": 2339}, {"path": "b", "width": 1700, "height": 2400},
             {"path": "c", "width": 1920, "height": 1080}, {"path": "d", "width": 600, "height": 600}]
    spec = {"pages": pages, "mode": "gundam", "max_tiles": 9}
    # 2x3, 2x3 again, 4x2 (max 9), untiled: three layouts -> three warm-up pages.
    assert [r["image"]["path"] for r in warmup_requests(spec)] == ["a", "c", "d"]
    assert [r["image"]["path"] for r in warmup_requests(spec | {"mode": "base"})] == ["a"]


def test_host_summary_by_hand():
    from dsocr_perf.launch.manifest import host_summary
    pages = [{"request": i, "page": 0, "repeat": i, "workload": {"generated_tokens": 100},
              "host_times_s": {"prefill": 0.5, "decode": total - 0.5, "total": total}}
             for i, total in enumerate([2.0, 3.0])]
    lines = host_summary({"pages": pages})
    # mean (2 + 3) / 2 = 2.5 s; std of {2, 3} = 0.7071 s; 200 tokens / 5 s = 40/s; 2 pages / 5 s = 0.4/s.
    assert lines[0] == ("2 measured request(s) under nsys: mean 2500.0 ms a page (std 707.1, min 2000.0, "
                        "max 3000.0); 40.0 generated tokens/s, 0.400 pages/s")
    assert lines[2] == "  request 1 (page 0, repeat 1): 3000.0 ms (prefill 500.0, decode 2500.0 ms)"
