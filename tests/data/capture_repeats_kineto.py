"""Capture the small real Kineto traces that tests/test_dataset.py and tests/test_diff.py read.

Run on a CUDA machine: `python tests/data/capture_repeats_kineto.py OUTDIR`. It writes
`repeats-a.pt.trace.json.gz` and `repeats-b.pt.trace.json.gz` (+ the manifest NAME.json beside each, as the capture writes it):
two pages x 3 repeats, each a `request` range holding the DeepSeek-OCR stage layout
(preprocess; prefill > sam, clip, projector per view batch, llm_prefill; decode > decode_step).
The stage bodies are plain bf16 matmuls sized so the stages differ (page p2 has half the rows
of p1); variant b runs twice the `sam` matmuls and decodes 12 tokens instead of 8, so a diff of
a against b has real, large changes next to unchanged stages (clip, projector, llm_prefill).
"""
import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

dev, dt = "cuda", torch.bfloat16
torch.manual_seed(0)
W = torch.randn(1024, 1024, device=dev, dtype=dt)


def matmuls(x, n):
    for _ in range(n):
        x = torch.nn.functional.gelu(x @ W)
    return x


def page(rows, sam_layers, decode_steps):
    with record_function("request"):
        with record_function("preprocess"):
            x = torch.randn(rows, 1024, dtype=dt).pin_memory().to(dev, non_blocking=True)
        with record_function("prefill"):
            for batch_rows in (rows, rows // 4):  # tiles, then the global view
                v = x[:batch_rows]
                with record_function("sam"):
                    v = matmuls(v, sam_layers)
                with record_function("clip"):
                    v = matmuls(v, 3)
                with record_function("projector"):
                    v = v @ W
            with record_function("llm_prefill"):
                h = matmuls(x, 4)
        kv = h[:256]
        with record_function("decode"):
            for _step in range(decode_steps):
                with record_function("decode_step"):
                    q = kv[-1:] @ W
                    scores = torch.softmax((q @ kv.T).float(), -1).to(dt)
                    kv = torch.cat([kv, scores @ kv], 0)  # context grows by one token a step
        torch.cuda.synchronize()


def capture(out: Path, name: str, rows: int, sam_layers: int, decode_steps: int, pages=("p1", "p2"), repeats=3):
    page(rows, sam_layers, decode_steps)  # warm-up, not traced
    manifest = {"schema": "dsocr-manifest/1", "pages": [],
                "model": {"preset": "kineto-fixture", "config": {"name": "matmul-stand-in"}},
                "capture": {"warmup_pages": 1, "measured_pages": len(pages), "repeats": repeats},
                "environment": {"gpu_name": torch.cuda.get_device_name(), "torch": torch.__version__}}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        request = 0
        for image in pages:
            for repeat in range(repeats):
                page(rows if image == "p1" else rows // 2, sam_layers, decode_steps)
                manifest["pages"].append({"request": request, "repeat": repeat,
                                          "image": {"path": f"{image}.png"},
                                          "workload": {"generated_tokens": decode_steps}})
                request += 1
    raw = out / f"{name}.pt.trace.json"
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(out / f"{name}.pt.trace.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    (out / f"{name}.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    capture(out, "repeats-a", rows=2048, sam_layers=6, decode_steps=8)
    capture(out, "repeats-b", rows=2048, sam_layers=12, decode_steps=12)
    print(sorted(p.name for p in out.iterdir()))
