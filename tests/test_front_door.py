"""The front door of the capture side: --version, defaults in --help, the missing capture extra, the full model on a CPU."""
import subprocess
import sys
from pathlib import Path

import pytest

from dsocr_perf.dsocr import cli as dsocr_cli
from dsocr_perf.dsocr.extras import package_version
from dsocr_perf.launch import cli as trace_cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "launch/assets/sample_page.png"
# Runs a console entry point with `torch` unimportable, as on a machine with the analysis side only.
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from dsocr_perf.{module} import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("main, prog", [(trace_cli.main, "dsocr-trace"), (dsocr_cli.main, "dsocr")])
def test_version(main, prog, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"{prog} {package_version()}"
    assert package_version() != "unknown"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        trace_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: gundam)", "(default: 256)", "(default: 0)", "(default: official)", "(default: traces)",
                  "(default: 9)"):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("module, args, prog", [("launch.cli", ["--max-new-tokens", "2"], "dsocr-trace"),
                                                ("dsocr.cli", ["shapes"], "dsocr")])
def test_missing_capture_extra_is_one_line(module, args, prog, tmp_path):
    run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH.replace("{module}", module), *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert lines[0].startswith(f"Error: {prog} needs the capture side") and "missing: torch" in lines[0]
    assert "pip install 'dsocr-perf[capture]'" in lines[0] and "download.pytorch.org/whl/cpu" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_full_model_refuses_the_cpu_unless_asked(capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dsocr_cli.main(["run", str(SAMPLE), "--random-weights", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: no CUDA GPU here") and "--device cpu" in err and "--preset tiny" in err
