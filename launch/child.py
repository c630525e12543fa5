"""The session process that runs under a profiler (started by launch.cli, never by hand).

    python -m dsocr_perf.launch.child --phase nsys|torch --spec SPEC.json

Both phases: load the model, run warm-up pages (one per tile grid, outside any capture), then the measured
requests, each inside a `request` range (payload = request index), pages in order and each page's
repeats back to back.
- nsys:  cudaProfilerStart -> measured requests -> the manifest as one NVTX mark -> cudaProfilerStop;
         the manifest also goes to spec["manifest_out"].
- torch: torch.profiler around the measured pages, once each (repeats would multiply a trace that
         is already large); writes spec["trace_out"] (.pt.trace.json.gz) and spec["ops_out"] (.md).
Progress goes to stdout, one line per phase; a user error is one `Error: ...` line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()


def progress(phase: str, what: str, seconds: float) -> None:
    print(f"[{phase} pass] {what}: {seconds:.1f} s", flush=True)


def measured_requests(spec: dict, repeats: int) -> list[dict]:
    return [{"request": i, "page": p, "repeat": r, "image": page}
            for i, (p, r, page) in enumerate((p, r, page) for p, page in enumerate(spec["pages"])
                                             for r in range(repeats))]


def run_requests(session, spec: dict, requests: list[dict]) -> list[dict]:
    from dsocr_perf.dsocr.stages import REQUEST, stage

    done = []
    for req in requests:
        with stage(REQUEST, payload=req["request"]):
            result = session.run_page(req["image"]["path"], mode=spec["mode"], max_new_tokens=spec["max_new_tokens"],
                                      ignore_eos=spec["ignore_eos"], max_tiles=spec["max_tiles"])
        done.append(req | {"result": result})
    return done


def warmup_requests(spec: dict) -> list[dict]:
    """One page per distinct view layout (tile grid): new shapes inside the capture would time cuBLAS
    heuristics and allocator growth, not the model."""
    from dsocr_perf.dsocr.workload import workload_shapes

    seen, warm = set(), []
    for req in measured_requests(spec, 1):
        img = req["image"]
        grid = workload_shapes(img["width"], img["height"], spec["mode"], 0, spec["max_tiles"]).tile_grid
        if grid not in seen:
            seen.add(grid)
            warm.append(req)
    return warm


def synchronize(session) -> None:
    import torch
    if session.device.type == "cuda":
        torch.cuda.synchronize(session.device)


def capture_info(spec: dict, phase: str, requests: list[dict], repeats: int) -> dict:
    return {"profiler": phase, "warmup_pages": len(warmup_requests(spec)), "measured_pages": len(spec["pages"]),
            "repeats": repeats, "requests": len(requests), "mode": spec["mode"], "max_new_tokens": spec["max_new_tokens"],
            "ignore_eos": spec["ignore_eos"], "max_tiles": spec["max_tiles"], "name": spec.get("name")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsocr_perf.launch.child")
    ap.add_argument("--phase", choices=["nsys", "torch"], required=True)
    ap.add_argument("--spec", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())

    import torch

    from dsocr_perf.dsocr.errors import DsocrError
    from dsocr_perf.dsocr.session import Session
    from dsocr_perf.dsocr.stages import mark
    from dsocr_perf.launch import torch_pass
    from dsocr_perf.launch.manifest import build_manifest, environment

    phase = args.phase
    if phase == "torch":
        spec["max_new_tokens"] = spec.get("torch_max_new_tokens") or spec["max_new_tokens"]
    progress(phase, "python + torch import", time.perf_counter() - START)
    try:
        t = time.perf_counter()
        session = Session.create(preset=spec["preset"], weights=spec["weights"], seed=spec["seed"],
                                 device=spec["device"], engine=spec.get("engine", "faithful"))
        synchronize(session)
        progress(phase, f"model load ({spec['preset']}, weights {session.weights_source}, {session.dtype})",
                 time.perf_counter() - t)

        t = time.perf_counter()
        warm = run_requests(session, spec, warmup_requests(spec))
        synchronize(session)
        progress(phase, f"warm-up ({len(warm)} page(s), one per tile grid)", time.perf_counter() - t)

        cuda = session.device.type == "cuda"
        env = environment(spec.get("nsys_version") if phase == "nsys" else None, spec["command"],
                          session.device.type)
        t = time.perf_counter()
        if phase == "nsys":
            repeats = spec["repeats"]
            requests = measured_requests(spec, repeats)
            if cuda:
                torch.cuda.profiler.start()
            done = run_requests(session, spec, requests)
            synchronize(session)
            manifest = build_manifest(session, done, environment=env,
                                      capture=capture_info(spec, phase, requests, repeats))
            mark(json.dumps(manifest))
            if cuda:
                torch.cuda.profiler.stop()
            Path(spec["manifest_out"]).write_text(json.dumps(manifest, indent=1) + "\n")
        else:
            requests = measured_requests(spec, 1)

            def run():
                done = run_requests(session, spec, requests)
                synchronize(session)
                return done

            def describe(done):   # the manifest also rides in the Kineto trace's metadata
                manifest = build_manifest(session, done, environment=env,
                                          capture=capture_info(spec, phase, requests, 1))
                return {"dsocr_manifest": json.dumps(manifest)}

            header = [f"- torch {torch.__version__}, device {session.device} "
                      f"({env.get('gpu_name') or 'CPU'}), dtype {str(session.dtype).removeprefix('torch.')}",
                      f"- preset {spec['preset']}, weights {session.weights_source}, mode {spec['mode']}, "
                      f"max_new_tokens {spec['max_new_tokens']}, pages {len(spec['pages'])} (once each, "
                      "after one warm-up page)",
                      f"- images: {', '.join(Path(p['path']).name for p in spec['pages'])}"]
            done = torch_pass.profile(run, describe, cuda=cuda, trace_path=Path(spec["trace_out"]),
                                      ops_path=Path(spec["ops_out"]), title=f"Operators: {spec.get('name', 'run')}",
                                      header=header)
        tokens = sum(d["result"].generated_tokens for d in done)
        progress(phase, f"measured {len(done)} request(s), {tokens} generated tokens", time.perf_counter() - t)
    except DsocrError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 2
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        print(f"Error: GPU out of memory in the {phase} pass ({first}); use fewer --max-new-tokens, "
              "a smaller --mode or a GPU with more memory", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
