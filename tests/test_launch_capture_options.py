"""GPU metrics sampling and the operator-range capture of dsocr-trace, on the CPU with the stand-in nsys of
test_launch_cli: FAKE_NSYS_OPTIONS says which options its `nsys profile --help` lists; FAKE_NSYS_MODE
no-metrics-gpu makes `--gpu-metrics-devices=help` list none, metrics-fail makes a capture with GPU metrics fail at
once (as nsys does when it cannot set sampling up); FAKE_NSYS_APP=skip writes the session's manifest from its
spec instead of running it (the real session runs in test_launch_cli and in the operator-range test here)."""
import json
from types import SimpleNamespace

import pytest
from stand_in import stand_in
from test_launch_cli import FAKE_NSYS, SAMPLE

from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.launch import child, cli, gpu_metrics, ops_nvtx
from dsocr_perf.launch.command import NSYS_PROFILE_OPTIONS
from dsocr_perf.launch.nsys import has_option, profile_help

QUICK = ["--preset", "tiny", "--mode", "tiny", "--max-new-tokens", "2", "--device", "cpu", "--no-torch-profiler",
         "--no-analyze"]


@pytest.fixture(scope="module")
def nsys_bin(tmp_path_factory):
    return stand_in(tmp_path_factory.mktemp("nsys"), "nsys", FAKE_NSYS)


@pytest.fixture
def fake_env(monkeypatch, shared):
    def setup(mode="ok", options="--gpu-metrics-devices,--pytorch", app="skip"):
        monkeypatch.setenv("FAKE_NSYS_MODE", mode)
        monkeypatch.setenv("FAKE_NSYS_OPTIONS", options)
        monkeypatch.setenv("FAKE_NSYS_SQLITE", str(shared / "fixtures/nsys/tiny-2025.3.sqlite"))
        monkeypatch.setenv("FAKE_NSYS_APP", app)
    return setup


def capture(tmp_path, nsys_bin, capsys, *args, name="g"):
    code = cli.main([str(SAMPLE), *QUICK, "--name", name, "--out-dir", str(tmp_path), "--nsys", str(nsys_bin), *args])
    out, err = capsys.readouterr()
    return code, out, err


def nsys_options(report) -> list[str]:
    """The options the stand-in nsys was given (it writes them into the report), without --output."""
    return report.read_text().splitlines()[:-1]


def probe(nsys_bin, *args):
    parsed = cli.parse_args([*args])
    return gpu_metrics.probe(nsys_bin, profile_help(nsys_bin), parsed)


def test_no_gpu_metrics_flag(tmp_path, nsys_bin, capsys, fake_env):
    fake_env()
    code, out, err = capture(tmp_path, nsys_bin, capsys, "--no-gpu-metrics")
    assert code == 0, err
    assert nsys_options(tmp_path / "g.nsys-rep") == list(NSYS_PROFILE_OPTIONS)
    assert json.loads((tmp_path / "g.json").read_text())["capture"]["gpu_metrics"] == {
        "enabled": False, "reason": "turned off with --no-gpu-metrics"}
    assert "GPU metrics: off (turned off with --no-gpu-metrics)" in out


def test_probe(nsys_bin, fake_env):
    fake_env()
    on = probe(nsys_bin)
    assert on.record() == {"enabled": True, "devices": "all", "frequency_hz": 2000}
    assert on.nsys_options() == ["--gpu-metrics-devices=all", "--gpu-metrics-frequency=2000"]
    assert probe(nsys_bin, "--gpu-metrics-frequency", "1000").nsys_options()[1] == "--gpu-metrics-frequency=1000"
    fake_env(options="--gpu-metrics-device")   # the spelling of nsys 2023.3 and older
    assert probe(nsys_bin).nsys_options()[0] == "--gpu-metrics-device=all"
    fake_env(options="--pytorch")
    assert probe(nsys_bin).record() == {
        "enabled": False, "reason": "this nsys does not list --gpu-metrics-devices in `nsys profile --help`"}
    fake_env("no-metrics-gpu")
    assert probe(nsys_bin).record() == {"enabled": False, "reason": "`nsys profile --gpu-metrics-devices=help` lists "
                                        "no GPU it can sample: None of the installed GPUs support GPU Metrics"}
    assert probe(nsys_bin, "--no-gpu-metrics").nsys_options() == []


def test_a_capture_that_fails_on_gpu_metrics_is_taken_again_without(tmp_path, nsys_bin, capsys, fake_env):
    fake_env("metrics-fail")
    code, out, err = capture(tmp_path, nsys_bin, capsys)
    assert code == 0, err
    assert "capturing again without them" in out and out.count("] nsys command: ") == 2
    record = json.loads((tmp_path / "g.json").read_text())["capture"]["gpu_metrics"]
    assert record["enabled"] is False and "insufficient privilege" in record["reason"]
    assert nsys_options(tmp_path / "g.nsys-rep") == list(NSYS_PROFILE_OPTIONS)


def test_operator_ranges_are_a_separate_capture(tmp_path, nsys_bin, capsys, fake_env):
    fake_env(app="run")   # the real session, twice
    code, out, err = capture(tmp_path, nsys_bin, capsys, "--torch-ops-nvtx")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.nsys-rep", "g.ops-nvtx.json",
                                                         "g.ops-nvtx.nsys-rep", "g.ops-nvtx.sqlite", "g.sqlite"]
    # The default trace has no operator ranges; the second capture asks nsys for them.
    assert "--pytorch=autograd-nvtx" not in nsys_options(tmp_path / "g.nsys-rep")
    assert nsys_options(tmp_path / "g.ops-nvtx.nsys-rep")[-1] == "--pytorch=autograd-nvtx"
    ops_manifest = json.loads((tmp_path / "g.ops-nvtx.json").read_text())
    assert ops_manifest["capture"]["torch_ops_nvtx"] == "nsys" and ops_manifest["workload"]["generated_tokens"] == 2
    assert "torch_ops_nvtx" not in json.loads((tmp_path / "g.json").read_text())["capture"]
    assert "] operator-range capture (nsys profile, operator ranges by nsys): done in" in out
    # The stand-in's export is a fixture without operator ranges: the run says so.
    assert "operator ranges in the operator-range capture: 0 -- none" in out
    # A forced run without the option removes the older operator-range capture (it would not match the new one).
    fake_env()
    code, _, err = capture(tmp_path, nsys_bin, capsys, "--force")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.nsys-rep", "g.sqlite"]


def test_operator_ranges_by_the_child_need_a_gpu(tmp_path, nsys_bin, capsys, fake_env):
    fake_env(options="--gpu-metrics-devices")   # no --pytorch: auto falls back to emit_nvtx in the child
    assert ops_nvtx.method(profile_help(nsys_bin), "auto") == "emit"
    code, out, err = capture(tmp_path, nsys_bin, capsys, "--torch-ops-nvtx")
    assert code == 0, err
    assert json.loads((tmp_path / "g.ops-nvtx.json").read_text())["capture"]["torch_ops_nvtx"] == "emit"
    assert not any(o.startswith("--pytorch") for o in nsys_options(tmp_path / "g.ops-nvtx.nsys-rep"))
    # In the child, emit_nvtx needs a CUDA build of torch: on a CPU the session stops with one Error line.
    with pytest.raises(DsocrError, match="--torch-ops-nvtx needs a GPU"):
        child.operator_ranges({"torch_ops_nvtx": "emit"}, cuda=False)
    assert child.operator_ranges({"torch_ops_nvtx": "nsys"}, cuda=False).__class__.__name__ == "nullcontext"


def test_existing_operator_range_capture_needs_force(tmp_path, nsys_bin, capsys, fake_env):
    fake_env()
    (tmp_path / "g.ops-nvtx.sqlite").write_text("keep me")
    code, _, err = capture(tmp_path, nsys_bin, capsys)
    assert code == 2 and "g.ops-nvtx.sqlite" in err and "--force" in err
    assert (tmp_path / "g.ops-nvtx.sqlite").read_text() == "keep me"


def test_operator_ranges_counted_in_an_export(shared, tmp_path):
    import shutil
    import sqlite3
    copy = tmp_path / "ops.sqlite"
    shutil.copy(shared / "fixtures/nsys/tiny-2025.3.sqlite", copy)
    assert ops_nvtx.operator_ranges(copy) == 0
    con = sqlite3.connect(copy)
    con.execute("INSERT INTO NVTX_EVENTS (start, \"end\", eventType, text, globalTid) VALUES "
                "(1, 2, 59, 'aten::mm, op_id = 7', 1), (3, 4, 59, 'aten::add', 1), (5, 6, 59, 'sam', 1)")
    con.commit()
    con.close()
    assert ops_nvtx.operator_ranges(copy) == 2
    assert ops_nvtx.operator_ranges(tmp_path / "missing.sqlite") == 0


def test_option_parsing_helpers():
    assert ops_nvtx.method("  --pytorch=\n", "auto") == "nsys"
    assert ops_nvtx.method("  --python-sampling=\n", "auto") == "emit"
    assert ops_nvtx.method("", "nsys") == "nsys"
    assert gpu_metrics.lists_a_gpu("Possible values:\n\t0: NVIDIA H100 80GB HBM3 PCI[0000:19:00.0]\n\tall: ...")
    assert not gpu_metrics.lists_a_gpu("ERR_NVGPUCTRPERM - no permission\n")
    assert gpu_metrics.NO_GPU_WORDS.search("ERR_NVGPUCTRPERM - no permission\n")
    assert not gpu_metrics.NO_GPU_WORDS.search("usage: nsys profile [<args>]")   # not understood: sampling stays on
    # --gpu-metrics-device must not be taken for a prefix of --gpu-metrics-devices, nor the other way round.
    assert not has_option("   --gpu-metrics-devices=", "--gpu-metrics-device")
    assert not has_option("   --gpu-metrics-device-x", "--gpu-metrics-device")
    assert has_option("   --gpu-metrics-device=", "--gpu-metrics-device")


def test_fallback_only_when_the_session_did_not_finish():
    from dsocr_perf.launch.errors import LaunchError
    calls = []

    def failing(m):
        calls.append(m.enabled)
        if m.enabled:
            raise LaunchError("the session under nsys did not finish (nsys exit 1); last output: GPU Metrics failed")

    progress = SimpleNamespace(line=lambda text: None)
    on = gpu_metrics.GpuMetrics(True)
    assert gpu_metrics.capture_with_fallback(failing, on, progress, lambda: False).enabled is False
    assert calls == [True, False]
    with pytest.raises(LaunchError):   # the session finished: a retry would cost a whole capture
        gpu_metrics.capture_with_fallback(failing, on, progress, lambda: True)
    with pytest.raises(LaunchError):   # nothing says GPU metrics: not theirs to fix
        gpu_metrics.capture_with_fallback(lambda m: (_ for _ in ()).throw(LaunchError("disk full")), on, progress,
                                          lambda: False)


def test_parquet_export_beside_the_sqlite(tmp_path, nsys_bin, capsys, fake_env, monkeypatch):
    """nsys's Parquet export is written as NAME.parquetdir and reads with the numbers of NAME.sqlite; an nsys that
    cannot export Parquet leaves a note and the capture stands; --no-parquet asks for none; --force replaces it."""
    from pathlib import Path

    from dsocr_perf.analyze.trace import open_trace

    fake_env()
    code, out, err = capture(tmp_path, nsys_bin, capsys, name="without")
    assert code == 0, err
    assert "Parquet export skipped: nsys export --type=parquetdir failed (exit 1)" in out
    assert not (tmp_path / "without.parquetdir").exists() and (tmp_path / "without.sqlite").is_file()

    monkeypatch.setenv("FAKE_NSYS_PARQUET", str(Path(__file__).resolve().parent))
    code, out, err = capture(tmp_path, nsys_bin, capsys, name="with")
    assert code == 0, err
    folder = tmp_path / "with.parquetdir"
    assert folder.is_dir() and (folder / "CUPTI_ACTIVITY_KIND_KERNEL.parquet").is_file()
    assert "export (nsys export --type=parquetdir)" in out
    a, b = open_trace(folder, cache=False), open_trace(tmp_path / "with.sqlite", cache=False)
    assert a.table("stages").equals(b.table("stages"))

    code, _, err = capture(tmp_path, nsys_bin, capsys, name="with")
    assert code != 0 and "already exist" in err and "with.parquetdir" in err
    (folder / "stale.parquet").write_bytes(b"")
    code, _, err = capture(tmp_path, nsys_bin, capsys, "--force", name="with")
    assert code == 0, err
    assert not (folder / "stale.parquet").exists()
    code, _, err = capture(tmp_path, nsys_bin, capsys, "--force", "--no-parquet", name="with")
    assert code == 0, err
    assert not folder.exists() and (tmp_path / "with.sqlite").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
