"""The session process that runs under a profiler (started by launch.cli, never by hand).

    python -m dsocr_perf.launch.child --phase nsys|torch|ncu --spec SPEC.json

Every phase: load the model, run warm-up pages (one per tile grid, outside any capture; their decode is cut
to WARMUP_DECODE_STEPS), then the measured requests, each inside a `request` range (payload = request
index), pages in order and each page's repeats back to back.
- nsys:  cudaProfilerStart -> measured requests -> the manifest as one NVTX mark -> cudaProfilerStop;
         the manifest also goes to spec["manifest_out"]. With spec["torch_ops_nvtx"] == "emit" the measured
         requests also run under torch.autograd.profiler.emit_nvtx (one NVTX range per operator).
- ncu:   as nsys, once per page; with spec["ncu_mode"] == "kernel" the profiler is on only for each page's
         vision and prefill and its sampled decode steps (spec["ncu_decode_steps"]), for ncu's
         --profile-from-start off.
- torch: torch.profiler around the measured pages, once each, decoding only spec["torch_decode_steps"]
         steps (all when null); writes spec["trace_out"] (.pt.trace.json.gz) and spec["ops_out"] (.md).
A page cut short (warm-up, the torch pass) still gets the KV cache of the full page, so it allocates what the
measured page allocates, and its decode steps are the first steps of the full page: step i's work depends only
on its KV length (dsocr/decoder.py slices the cache to the filled length).
Progress goes to stdout, one line per phase (`[PHASE pass] WHAT: S s`, read back by launch.timeline); a user
error is one `Error: ...` line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
# Decode steps of a warm-up page: its vision and prefill see every shape of the measured page; decode shapes are
# the same every step (one token), and the flash/efficient attention kernels the decoder keeps to need no
# per-length setup, so a few steps warm decode up.
WARMUP_DECODE_STEPS = 16


def progress(phase: str, what: str, seconds: float) -> None:
    print(f"[{phase} pass] {what}: {seconds:.1f} s", flush=True)


def measured_requests(spec: dict, repeats: int) -> list[dict]:
    return [{"request": i, "page": p, "repeat": r, "image": page}
            for i, (p, r, page) in enumerate((p, r, page) for p, page in enumerate(spec["pages"])
                                             for r in range(repeats))]


@contextlib.contextmanager
def full_kv_cache(session, extra_tokens: int):
    """Every KV cache the session makes while inside gets `extra_tokens` more positions than the page asks for."""
    if extra_tokens <= 0:
        yield
        return
    model = session.model
    make = model.new_cache
    model.new_cache = lambda max_len: make(max_len + extra_tokens)   # instance attribute over the method
    try:
        yield
    finally:
        del model.new_cache


def run_requests(session, spec: dict, requests: list[dict], decode_steps: int | None = None) -> list[dict]:
    """Each request's page, decoding `decode_steps` steps (all of max_new_tokens when None)."""
    from dsocr_perf.dsocr.stages import REQUEST, stage

    full = spec["max_new_tokens"]
    steps = min(decode_steps or full, full)
    done = []
    with full_kv_cache(session, full - steps):
        for req in requests:
            with stage(REQUEST, payload=req["request"]):
                result = session.run_page(req["image"]["path"], mode=spec["mode"], max_new_tokens=steps,
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
            "ignore_eos": spec["ignore_eos"], "max_tiles": spec["max_tiles"], "name": spec.get("name"),
            "warmup_decode_steps": min(WARMUP_DECODE_STEPS, spec["max_new_tokens"])}


class ProfilerWindows:
    """cudaProfilerStart/Stop around what ncu's kernel replay is to see (it runs with --profile-from-start off):
    each page's vision and prefill, then only the sampled decode steps.

    Step i's window opens when forward i-1 returns (when prefill returns, for step 0) and closes when forward i
    returns, so it holds the step's token pick as well as its forward; ncu's NVTX filter keeps only the kernels
    inside stage ranges. `pages` records what was on: [{"decode_steps": [0, 255]}, ...]."""

    def __init__(self, session, sampled_steps: list[int]):
        self.model = session.model
        self.cuda = session.device.type == "cuda"
        self.sampled = set(sampled_steps)
        self.on = False
        self.step = 0            # index of the next decode forward of the current page
        self.pages: list[dict] = []

    def switch(self, on: bool) -> None:
        import torch
        if on != self.on and self.cuda:
            (torch.cuda.profiler.start if on else torch.cuda.profiler.stop)()
        self.on = on

    @contextlib.contextmanager
    def installed(self):
        model = self.model
        embed, prefill, decode = model.image_embeddings, model.prefill, model.decode_step

        def embed_hook(*args, **kwargs):           # a new page: vision and prefill are profiled in full
            self.pages.append({"decode_steps": []})
            self.switch(True)
            return embed(*args, **kwargs)

        def prefill_hook(*args, **kwargs):
            out = prefill(*args, **kwargs)
            self.step = 0
            self.switch(0 in self.sampled)
            return out

        def decode_hook(*args, **kwargs):
            if self.on:
                self.pages[-1]["decode_steps"].append(self.step)
            out = decode(*args, **kwargs)
            self.step += 1
            self.switch(self.step in self.sampled)
            return out

        model.image_embeddings, model.prefill, model.decode_step = embed_hook, prefill_hook, decode_hook
        try:
            yield self
        finally:
            del model.image_embeddings, model.prefill, model.decode_step
            self.switch(False)


def operator_ranges(spec: dict, cuda: bool):
    """torch's own operator NVTX ranges around the measured pages, when the launcher asks the child for them."""
    if spec.get("torch_ops_nvtx") != "emit":
        return contextlib.nullcontext()
    from dsocr_perf.dsocr.errors import DsocrError
    if not cuda:
        raise DsocrError("--torch-ops-nvtx needs a GPU: torch.autograd.profiler.emit_nvtx works only in a CUDA "
                         "build of torch (or use an nsys that has --pytorch=autograd-nvtx)")
    import torch
    return torch.autograd.profiler.emit_nvtx()


def capture_phase(session, spec: dict, env: dict, phase: str) -> list[dict]:
    """nsys and ncu: the measured requests between cudaProfilerStart and Stop, the manifest as a mark and a file."""
    import torch

    from dsocr_perf.dsocr.stages import mark
    from dsocr_perf.launch.manifest import build_manifest

    cuda = session.device.type == "cuda"
    repeats = spec["repeats"]
    requests = measured_requests(spec, repeats)
    capture = capture_info(spec, phase, requests, repeats)
    capture |= {k: spec[k] for k in ("gpu_metrics", "torch_ops_nvtx") if spec.get(k)}
    windows = None
    if phase == "ncu" and spec.get("ncu_mode") == "kernel":
        windows = ProfilerWindows(session, spec["ncu_decode_steps"])
        with windows.installed():
            done = run_requests(session, spec, requests)
            synchronize(session)
    else:
        if cuda:
            torch.cuda.profiler.start()
        with operator_ranges(spec, cuda):
            done = run_requests(session, spec, requests)
        synchronize(session)
    if phase == "ncu":
        capture["ncu"] = {"mode": spec["ncu_mode"],
                          "profiled": windows.pages if windows else "every stage range of every measured page"}
    manifest = build_manifest(session, done, environment=env, capture=capture)
    mark(json.dumps(manifest))
    if cuda and windows is None:
        torch.cuda.profiler.stop()
    Path(spec["manifest_out"]).write_text(json.dumps(manifest, indent=1) + "\n")
    return done


def torch_phase(session, spec: dict, env: dict) -> list[dict]:
    import torch

    from dsocr_perf.launch import torch_pass
    from dsocr_perf.launch.manifest import build_manifest

    requests = measured_requests(spec, 1)
    full = spec["max_new_tokens"]
    steps = min(spec.get("torch_decode_steps") or full, full)

    def run():
        done = run_requests(session, spec, requests, steps)
        synchronize(session)
        return done

    def describe(done):   # the manifest also rides in the Kineto trace's metadata
        capture = capture_info(spec, "torch", requests, 1) | {"decode_steps_profiled": steps}
        manifest = build_manifest(session, done, environment=env, capture=capture)
        return {"dsocr_manifest": json.dumps(manifest)}

    covered = "every decode step" if steps == full else f"the first {steps} of {full} decode steps"
    header = [(f"- torch {torch.__version__}, device {session.device} "
               f"({env.get('gpu_name') or 'CPU'}), dtype {str(session.dtype).removeprefix('torch.')}"),
              (f"- preset {spec['preset']}, weights {session.weights_source}, mode {spec['mode']}, "
               f"max_new_tokens {full}, pages {len(spec['pages'])} (once each, after one warm-up page per tile grid)"),
              (f"- covers: each page's preprocessing, vision and prefill in full and {covered} "
               f"(decode steps 0-{steps - 1}; --torch-decode-steps); the nsys trace has them all"),
              f"- images: {', '.join(Path(p['path']).name for p in spec['pages'])}"]
    return torch_pass.profile(run, describe, cuda=session.device.type == "cuda", trace_path=Path(spec["trace_out"]),
                              ops_path=Path(spec["ops_out"]), title=f"Operators: {spec.get('name', 'run')}",
                              header=header, report=lambda what, s: progress("torch", what, s))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsocr_perf.launch.child")
    ap.add_argument("--phase", choices=["nsys", "torch", "ncu"], required=True)
    ap.add_argument("--spec", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())

    import torch

    from dsocr_perf.dsocr.errors import DsocrError
    from dsocr_perf.dsocr.session import Session
    from dsocr_perf.launch.manifest import environment

    phase = args.phase
    progress(phase, "python + torch import", time.perf_counter() - START)
    try:
        t = time.perf_counter()
        session = Session.create(preset=spec["preset"], weights=spec["weights"], seed=spec["seed"],
                                 device=spec["device"], engine=spec.get("engine", "faithful"))
        synchronize(session)
        progress(phase, f"model load ({spec['preset']}, weights {session.weights_source}, {session.dtype})",
                 time.perf_counter() - t)

        t = time.perf_counter()
        warm = run_requests(session, spec, warmup_requests(spec), WARMUP_DECODE_STEPS)
        synchronize(session)
        progress(phase, f"warm-up ({len(warm)} page(s), one per tile grid, "
                        f"{min(WARMUP_DECODE_STEPS, spec['max_new_tokens'])} decode steps)", time.perf_counter() - t)

        env = environment(spec.get("nsys_version") if phase == "nsys" else None, spec["command"],
                          session.device.type)
        if phase == "ncu":
            env["ncu"] = spec.get("ncu_version")
        t = time.perf_counter()
        if phase == "torch":
            done = torch_phase(session, spec, env)
        else:
            done = capture_phase(session, spec, env, phase)
        tokens = sum(d["result"].generated_tokens for d in done)
        if phase != "torch":   # the torch pass reports its own parts (profiled page, trace, table)
            progress(phase, f"measured pages ({len(done)} request(s), {tokens} generated tokens)",
                     time.perf_counter() - t)
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
