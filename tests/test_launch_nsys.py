"""nsys discovery order, the nsys command lines, and the report-importer diagnosis (no GPU, no nsys needed)."""
import stat
from pathlib import Path

import pytest

from dsocr_perf.launch import command
from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.nsys import find_importer, find_nsys, how_to_provide, import_qdstrm, missing_libraries

# `ldd QdstrmImporter` on the GPU machine (Nsight Compute 2025.3.1 bundle, docs/gpu-machine.md), abridged.
LDD_SAMPLE = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f2b1c5a0000)
\tlibdw.so.1 => not found
\tlibpthread.so.0 => /lib/x86_64-linux-gnu/libpthread.so.0 (0x00007f2b1c59b000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f2b1c200000)
\tlibelf.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b1c000000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2b1c5c0000)
"""


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_nsys(path: Path, version: str) -> Path:
    return executable(path, f"#!/bin/sh\necho 'NVIDIA Nsight Systems version {version}'\n")


@pytest.fixture
def root(tmp_path):
    """A fake file-system root with nsys in every install location of the search order."""
    r = tmp_path / "root"
    fake_nsys(r / "usr/local/cuda-12.9/bin/nsys", "2024.1.1.0-cuda129")
    fake_nsys(r / "usr/local/cuda-12.10/bin/nsys", "2024.2.1.0-cuda1210")
    fake_nsys(r / "opt/nvidia/nsight-systems/2025.3.1/bin/nsys", "2025.3.1.90-standalone")
    fake_nsys(r / "opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys", "2025.3.1.90-ncu")
    return r


def test_discovery_order(tmp_path, root):
    flag = fake_nsys(tmp_path / "flag/nsys", "1.0.0-flag")
    env_nsys = fake_nsys(tmp_path / "env/nsys", "2.0.0-env")
    on_path = fake_nsys(tmp_path / "bin/nsys", "3.0.0-path")
    full = {"NSYS": str(env_nsys), "PATH": str(on_path.parent)}
    # Each rule wins while the rules before it find nothing.
    assert find_nsys(str(flag), full, str(root)).version == "1.0.0-flag"
    assert find_nsys(str(flag.parent), full, str(root)).found_by == "--nsys"        # a folder works too
    assert find_nsys(None, full, str(root)).version == "2.0.0-env"
    assert find_nsys(None, {"PATH": str(on_path.parent)}, str(root)).version == "3.0.0-path"
    found = find_nsys(None, {"PATH": ""}, str(root))
    assert (found.version, found.found_by) == ("2024.2.1.0-cuda1210", "/usr/local/cuda*/bin")  # 12.10 > 12.9
    for d in ("usr/local/cuda-12.9", "usr/local/cuda-12.10"):
        (root / d / "bin/nsys").unlink()
    assert find_nsys(None, {"PATH": ""}, str(root)).version == "2025.3.1.90-standalone"
    (root / "opt/nvidia/nsight-systems/2025.3.1/bin/nsys").unlink()
    found = find_nsys(None, {"PATH": ""}, str(root))
    assert found.version == "2025.3.1.90-ncu"
    assert found.path == root / "opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys"


def test_nsys_missing_names_every_place_searched(tmp_path):
    with pytest.raises(LaunchError) as e:
        find_nsys(None, {"PATH": str(tmp_path)}, str(tmp_path))
    msg = str(e.value)
    assert "nsys) not found" in msg and "--nsys /path/to/nsys" in msg
    for place in ("$NSYS", "PATH", "/usr/local/cuda*/bin", "/opt/nvidia/nsight-systems/*/bin",
                  "/opt/nvidia/nsight-compute/*/host/target-linux-x64"):
        assert place in msg


def test_explicit_path_that_is_not_nsys_is_refused(tmp_path, root):
    with pytest.raises(LaunchError, match=r"--nsys points to .*missing.*not an executable nsys"):
        find_nsys(str(tmp_path / "missing"), {"PATH": ""}, str(root))
    with pytest.raises(LaunchError, match=r"\$NSYS points to"):
        find_nsys(None, {"NSYS": str(tmp_path / "nope"), "PATH": ""}, str(root))


def test_profile_command_line():
    app = command.child_command("nsys", Path("traces/.run.tmp.spec.json"), python="/usr/bin/python3")
    cmd = command.nsys_profile_command(Path("/opt/nsys"), Path("traces/.run.tmp.nsys-rep"), app)
    assert cmd == ["/opt/nsys", "profile", "--trace=cuda,nvtx", "--cuda-graph-trace=node",
                   "--capture-range=cudaProfilerApi", "--capture-range-end=stop", "--sample=none",
                   "--cpuctxsw=none", "--force-overwrite=true", "--output=traces/.run.tmp.nsys-rep",
                   "/usr/bin/python3", "-m", "dsocr_perf.launch.child", "--phase", "nsys", "--spec",
                   "traces/.run.tmp.spec.json"]
    # The application starts at the first argument without a leading dash.
    first_app = next(i for i, a in enumerate(cmd[2:], 2) if not a.startswith("-"))
    assert cmd[first_app:] == app


def test_export_and_stats_command_lines():
    assert command.nsys_export_command(Path("nsys"), Path("a.nsys-rep"), Path("a.sqlite")) == [
        "nsys", "export", "--type=sqlite", "--force-overwrite=true", "--output=a.sqlite", "a.nsys-rep"]
    assert command.nsys_stats_command(Path("nsys"), Path("c.sqlite"), Path("ref/c")) == [
        "nsys", "stats", "--report=nvtx_kern_sum,nvtx_gpu_proj_sum,nvtx_sum,cuda_gpu_kern_sum",
        "--format=csv", "--output=ref/c", "c.sqlite"]


def test_ldd_parsing_finds_the_two_missing_libraries():
    assert missing_libraries(LDD_SAMPLE) == ["libdw.so.1", "libelf.so.1"]
    assert missing_libraries("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n") == []
    hint = how_to_provide(["libdw.so.1"])
    assert "apt-get install libdw1 libelf1" in hint and "LD_LIBRARY_PATH" in hint


def test_importer_found_in_the_nsight_compute_layout(root):
    nsys = root / "opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys"
    assert find_importer(nsys) is None
    imp = executable(root / "opt/nvidia/nsight-compute/2025.3.1/host/linux-desktop-glibc_2_11_3-x64/QdstrmImporter",
                     "#!/bin/sh\nexit 1\n")
    assert find_importer(nsys) == imp


def test_importer_failure_names_the_missing_library(tmp_path, root):
    nsys = root / "opt/nvidia/nsight-systems/2025.3.1/bin/nsys"
    executable(root / "opt/nvidia/nsight-systems/2025.3.1/host-linux-x64/QdstrmImporter",
               "#!/bin/sh\necho 'error while loading shared libraries: libdw.so.1' >&2\nexit 127\n")
    sample = tmp_path / "ldd.txt"
    sample.write_text(LDD_SAMPLE)
    fake_ldd = executable(tmp_path / "ldd", f"#!/bin/sh\ncat {sample}\n")
    qdstrm = tmp_path / "run.qdstrm"
    qdstrm.write_text("raw")
    with pytest.raises(LaunchError) as e:
        import_qdstrm(nsys, qdstrm, ldd=str(fake_ldd))
    msg = str(e.value)
    assert "failed (exit 127)" in msg
    assert "it lacks libdw.so.1, libelf.so.1" in msg and "apt-get install libdw1 libelf1" in msg
    assert "libdw.so.1" in msg.split("last output:")[1]


def test_importer_success_gives_the_report(tmp_path, root):
    nsys = root / "opt/nvidia/nsight-systems/2025.3.1/bin/nsys"
    # The importer's contract: -i FILE.qdstrm writes FILE.nsys-rep beside it.
    executable(root / "opt/nvidia/nsight-systems/2025.3.1/host-linux-x64/QdstrmImporter",
               '#!/bin/sh\n[ "$1" = -i ] || exit 3\ncp "$2" "${2%.qdstrm}.nsys-rep"\n')
    qdstrm = tmp_path / "run.qdstrm"
    qdstrm.write_text("raw")
    assert import_qdstrm(nsys, qdstrm) == tmp_path / "run.nsys-rep"
    assert (tmp_path / "run.nsys-rep").read_text() == "raw"
