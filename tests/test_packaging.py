"""A non-editable install: the wheel holds the data files, and both commands work from it in another folder."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "traces/examples/nvtx-features-2025.3.sqlite"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site folder): the wheel built from this checkout and installed, without dependencies, into a
    folder of its own (the test's interpreter provides the dependencies)."""
    base = tmp_path_factory.mktemp("wheel")
    # built from a copy of the files git would commit: a build/ or *.egg-info left in this checkout by an
    # earlier install makes setuptools add modules that a clean build leaves out
    source = base / "source"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(base / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                           env=os.environ | {"TMPDIR": str(base)})
    assert build.returncode == 0, build.stderr
    wheel = next((base / "dist").glob("dsocr_perf-*.whl"))
    site = base / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    return wheel, site


def test_wheel_holds_the_data_files(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    queries = {f"dsocr_perf/sql/{p.name}" for p in (REPO / "sql").glob("*.sql")}
    presets = {f"dsocr_perf/models/presets/{p.name}" for p in (REPO / "models/presets").glob("*.json")}
    assert len(queries) >= 10 and queries <= names
    assert presets and presets <= names
    assert "dsocr_perf/launch/assets/sample_page.png" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("dsocr-analyze = dsocr_perf.analyze.cli:main", "dsocr-trace = dsocr_perf.launch.cli:main",
                   "dsocr = dsocr_perf.dsocr.cli:main"):
        assert script in text


def test_wheel_holds_every_module(installed):
    """Every Python file of the card's folders is in the wheel, under dsocr_perf (a subpackage left out of
    pyproject.toml's list breaks a non-editable install, and nothing else would notice: an editable install of
    this checkout in the same interpreter finds the missing modules)."""
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"dsocr_perf/{p.relative_to(REPO).as_posix()}" for folder in ("analyze", "dsocr", "launch", "models")
               for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert len(sources) > 60 and sorted(sources - names) == []


def run_installed(site: Path, cwd: Path, *args):
    """python -m ARGS with only the installed copy of dsocr_perf importable (not this checkout's)."""
    env = os.environ | {"PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_both_commands_from_the_wheel_in_another_folder(installed, tmp_path):
    _, site = installed
    origin = run_installed(site, tmp_path, "dsocr_perf.analyze.cli", "--version")
    assert origin.returncode == 0 and origin.stdout.startswith("dsocr-analyze ")
    probe = subprocess.run([sys.executable, "-c", "import dsocr_perf.analyze as a, dsocr_perf.launch.cli as c, os; "
                            "print(a.__file__); print(os.path.isfile(c.DEFAULT_IMAGE), c.DEFAULT_IMAGE)"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env=os.environ | {"PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"})
    module_file, image = probe.stdout.splitlines()
    assert module_file.startswith(str(site)) and image == f"True {site}/dsocr_perf/launch/assets/sample_page.png"
    stages = run_installed(site, tmp_path, "dsocr_perf.analyze.cli", str(EXAMPLE), "--no-cache")
    assert stages.returncode == 0 and "sam" in stages.stdout, stages.stderr
    # the ready-made queries the output suggests, from a folder without sql/
    query = run_installed(site, tmp_path, "dsocr_perf.analyze.cli", "sql", str(EXAMPLE), "-f", "sql/top_kernels.sql",
                          "--csv", "--no-cache")
    assert query.returncode == 0 and query.stdout.count("\n") > 1, query.stderr
    trace = run_installed(site, tmp_path, "dsocr_perf.launch.cli", "--help")
    assert trace.returncode == 0 and "bundled sample page" in trace.stdout
    assert list(tmp_path.iterdir()) == []
