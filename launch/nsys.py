"""Find Nsight Systems, and rescue a capture whose report importer failed.

Search order for `nsys` (first hit wins):
  1. `--nsys PATH` (a file, or a folder holding `nsys`)
  2. `$NSYS`
  3. `PATH`
  4. the CUDA toolkit: /usr/local/cuda*/bin/nsys (newest first)
  5. /opt/nvidia/nsight-systems/*/bin/nsys (newest first)
  6. the copy bundled with Nsight Compute: /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys

`nsys profile` writes a raw `.qdstrm` and converts it with `QdstrmImporter` into the `.nsys-rep`.
When that importer cannot start (a missing shared library, seen with the Nsight Compute bundle:
libdw.so.1), only the `.qdstrm` is left; `import_qdstrm` runs the importer itself and, if it
still fails, names the missing library and how to provide it.
"""
from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.programs import Program, SearchOrder, executable, find_program

NSYS_SEARCH = SearchOrder("nsys", "--nsys", "NSYS", (
    "usr/local/cuda*/bin/nsys",
    "opt/nvidia/nsight-systems/*/bin/nsys",
    "opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys"))
Nsys = Program


def find_nsys(explicit: str | None = None, env: dict | None = None, root: str = "/") -> Nsys:
    return find_program(NSYS_SEARCH, explicit, env, root, title="Nsight Systems (nsys)",
                        advice="Install Nsight Systems (or Nsight Compute, which bundles it) "
                               "or pass --nsys /path/to/nsys")


def profile_help(nsys: Path) -> str:
    """`nsys profile --help`: which options this nsys knows (GPU metrics, --pytorch); empty if it fails."""
    try:
        out = subprocess.run([str(nsys), "profile", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def has_option(help_text: str, option: str) -> bool:
    """Whether `nsys profile --help` lists `option` (a whole option name, not a prefix of a longer one)."""
    return re.search(re.escape(option) + r"(?![\w-])", help_text) is not None


# --- the report importer -----------------------------------------------------------------

def importer_candidates(nsys: Path) -> list[Path]:
    """Where QdstrmImporter sits relative to nsys in the known layouts."""
    dirs = []
    for p in (nsys, nsys.resolve()):
        for d in (p.parent, p.parent.parent):
            if d not in dirs:
                dirs.append(d)
    found = []
    for d in dirs:
        for pattern in ("QdstrmImporter", "host-linux-x64/QdstrmImporter",
                        "linux-desktop-glibc_*-x64/QdstrmImporter"):
            for hit in sorted(glob.glob(str(d / pattern))):
                if Path(hit) not in found:
                    found.append(Path(hit))
    return found


def find_importer(nsys: Path) -> Path | None:
    for p in importer_candidates(nsys):
        if executable(p):
            return p
    return None


def missing_libraries(ldd_output: str) -> list[str]:
    """Libraries that `ldd` reports as 'not found' (lines like '\tlibdw.so.1 => not found')."""
    return re.findall(r"^\s*(\S+)\s+=>\s+not found", ldd_output, flags=re.MULTILINE)


# Debian/Ubuntu packages for the libraries seen missing next to the bundled importer.
LIBRARY_PACKAGES = {"libdw.so.1": "libdw1", "libelf.so.1": "libelf1", "liblzma.so.5": "liblzma5",
                    "libz.so.1": "zlib1g", "libbz2.so.1.0": "libbz2-1.0"}


def how_to_provide(libraries: list[str]) -> str:
    pkgs = sorted({LIBRARY_PACKAGES.get(lib, "") for lib in libraries} - {""})
    if pkgs:
        apt = " ".join(pkgs + (["libelf1"] if "libdw1" in pkgs and "libelf1" not in pkgs else []))
        return (f"install them (Debian/Ubuntu: apt-get install {apt}), or without root: "
                f"apt-get download {apt} && dpkg -x each .deb into DIR and "
                "export LD_LIBRARY_PATH=DIR/usr/lib/x86_64-linux-gnu")
    return "install the packages that provide them, or add their folder to LD_LIBRARY_PATH"


def diagnose_importer(importer: Path, ldd: str = "ldd") -> str:
    """One sentence on why the importer cannot run, from `ldd`."""
    try:
        out = subprocess.run([ldd, str(importer)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run {ldd} on it ({e})"
    missing = missing_libraries(out.stdout + out.stderr)
    if not missing:
        return "ldd finds all its shared libraries"
    return f"it lacks {', '.join(missing)}: {how_to_provide(missing)}"


def import_qdstrm(nsys: Path, qdstrm: Path, ldd: str = "ldd") -> Path:
    """Turn BASE.qdstrm into BASE.nsys-rep with QdstrmImporter; LaunchError with the cause if not."""
    rep = qdstrm.with_suffix(".nsys-rep")
    importer = find_importer(nsys)
    if importer is None:
        raise LaunchError(f"nsys left only {qdstrm} and no QdstrmImporter was found near {nsys} "
                          "(looked in its folder, host-linux-x64/, linux-desktop-glibc_*-x64/)")
    print(f"nsys left only {qdstrm.name}; running {importer}", flush=True)
    try:
        run = subprocess.run([str(importer), "-i", str(qdstrm)], capture_output=True, text=True,
                             timeout=1800)
        output, code = run.stdout + run.stderr, run.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        output, code = str(e), -1
    if code == 0 and rep.exists():
        return rep
    raise LaunchError(f"the report importer {importer} failed (exit {code}): "
                      f"{diagnose_importer(importer, ldd)}; last output: {last_lines(output, 3)}")


def last_lines(text: str, n: int = 5) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"
