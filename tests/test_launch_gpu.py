"""dsocr-trace for real: nsys + a CUDA GPU, tiny preset (about a minute). Skipped without either."""
import gzip
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dsocr_perf.launch.errors import LaunchError
from dsocr_perf.launch.nsys import find_nsys

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_tiny_capture_on_the_gpu(tmp_path):
    try:
        find_nsys()
    except LaunchError:
        pytest.skip("nsys not found")
    run = subprocess.run([sys.executable, "-m", "dsocr_perf.launch.cli", "--preset", "tiny", "--mode", "base",
                          "--max-new-tokens", "4", "--repeats", "2", "--torch-max-new-tokens", "2",
                          "--name", "g", "--out-dir", str(tmp_path), "--no-analyze"],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    con = sqlite3.connect(tmp_path / "g.sqlite")
    texts = [t for (t,) in con.execute(
        "SELECT COALESCE(e.text, s.value) FROM NVTX_EVENTS e LEFT JOIN StringIds s ON s.id = e.textId")]
    # Only the measured requests are inside the capture range: 2 requests x 4 decode steps, no warm-up.
    assert texts.count("request") == 2 and texts.count("decode_step") == 8
    assert texts.count("sam") == texts.count("clip") == texts.count("projector") == 2   # base: one view batch
    manifests = [json.loads(t) for t in texts if t and t.startswith('{"schema"')]
    assert len(manifests) == 1 and len(manifests[0]["pages"]) == 2
    assert manifests[0]["environment"]["gpu_name"] and manifests[0]["environment"]["sm_count"] > 0
    assert con.execute("SELECT COUNT(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0] > 0
    with gzip.open(tmp_path / "g.pt.trace.json.gz", "rt") as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events)
