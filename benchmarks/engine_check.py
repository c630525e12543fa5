"""The fast decode engine against the faithful one: same answers, and how much faster (issue 17).

    python benchmarks/engine_check.py --out traces/engine_check.json                  # H100: official, bf16
    python benchmarks/engine_check.py --device cpu --preset tiny --tokens 16 --runs 2 --out /tmp/check.json

One model (seeded random weights unless --weights), one page (default: the bundled sample page, Gundam
2x3), vision and prompt computed once; both engines then prefill the same prompt into their own caches.

(a) agreement, teacher-forced: the faithful engine decodes --tokens greedily (EOS ignored, the session's
    no-repeat n-gram rule); then both engines consume exactly that sequence, step by step, and each step
    compares the argmax of the two logit vectors, the top-k expert set of every MoE layer (faithful:
    `decoder.route` on the MoE input; fast: the ids its step computed, read from the graph's buffers)
    and the largest absolute logit difference.
    The same comparison between the faithful engine and itself with another attention kernel (PyTorch's
    math SDPA instead of the fused one it picks) measures the floor: how often a rounding choice alone flips
    a near tie with these weights. Random weights make logits nearly flat, so the floor is not 100 %.
(b) decode speed, no profiler: greedy decode of --speed-tokens on that prompt, per engine; a token's time
    is the host wall time from one step call to the next (each step ends with the host read of the
    token it picked, so the GPU work is inside); the first --warmup-tokens steps are left out, the rest
    averaged, and the median over --runs runs is reported with the fast/faithful speed-up.

Prints one block per part and writes every number to --out (JSON; an existing file needs --force).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PAGE = REPO / "launch/assets/sample_page.png"


def parse_args(argv):
    from dsocr_perf.dsocr.config import PRESETS
    from dsocr_perf.dsocr.workload import MODES

    ap = argparse.ArgumentParser(prog="engine_check.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, metavar="JSON", help="where to write the numbers")
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    ap.add_argument("--image", default=str(SAMPLE_PAGE))
    ap.add_argument("--mode", default="gundam", choices=list(MODES))
    ap.add_argument("--preset", default="official", choices=list(PRESETS))
    ap.add_argument("--weights", metavar="DIR", help="checkpoint folder (default: seeded random weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=256, help="teacher-forced steps (default 256)")
    ap.add_argument("--speed-tokens", type=int, help="tokens per timed decode (default: --tokens)")
    ap.add_argument("--warmup-tokens", type=int, default=8, help="first steps of each timed decode left out")
    ap.add_argument("--runs", type=int, default=3, help="timed decodes per engine; the median is reported")
    ap.add_argument("--no-graph", action="store_true", help="run the fast engine eagerly (no CUDA graph)")
    args = ap.parse_args(argv)
    args.speed_tokens = args.speed_tokens or args.tokens
    if min(args.tokens, args.runs) < 1 or args.warmup_tokens < 0:
        ap.error("--tokens and --runs must be at least 1, --warmup-tokens at least 0")
    if args.speed_tokens <= args.warmup_tokens:
        ap.error(f"--speed-tokens ({args.speed_tokens}) must exceed --warmup-tokens ({args.warmup_tokens})")
    return args


class Check:
    """The model, the page's prompt and image embeddings, and the two engines' ways to start a decode."""

    def __init__(self, session, fast, prompt_ids, image_embeds):
        self.session, self.model, self.fast = session, session.model, fast
        self.prompt_ids, self.image_embeds = prompt_ids, image_embeds
        self.eos_id = session.config.decoder.eos_token_id

    def start(self, engine: str, tokens: int):
        """Prefill the prompt into the engine's cache for `tokens` more positions: (logits, step, state)."""
        positions = len(self.prompt_ids) + tokens
        if engine == "faithful":
            cache = self.model.new_cache(positions)
            logits = self.model.prefill(self.prompt_ids, self.image_embeds, cache)
            return logits, (lambda token: self.model.decode_step(token, cache)), None
        static = self.fast.prepare(positions)        # captures the graph on the first use of this capacity
        logits = self.model.prefill(self.prompt_ids, self.image_embeds, static.cache)
        return logits, static.start(), static

    def greedy(self, engine: str, tokens: int, stamps: list[float] | None = None) -> list[int]:
        """Greedy decode (EOS ignored); `stamps` gets the host time at each step call."""
        from dsocr_perf.dsocr.generate import greedy_decode

        logits, step, _ = self.start(engine, tokens)

        def timed_step(token):
            stamps.append(time.perf_counter())
            return step(token)

        return greedy_decode(step if stamps is None else timed_step, logits, prompt_ids=self.prompt_ids,
                             max_new_tokens=tokens, eos_id=self.eos_id, ignore_eos=True).token_ids


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(check: Check, reference: list[int]) -> dict:
    """Both engines fed `reference` token by token from the same prefill; compared after every step."""
    import torch

    from dsocr_perf.dsocr.decoder import MoE, route

    device = check.session.device
    moe_layers = [layer.mlp for layer in check.model.model.layers if isinstance(layer.mlp, MoE)]
    f_logits, f_step, _ = check.start("faithful", len(reference))
    x_logits, x_step, static = check.start("fast", len(reference))
    prefill_diff = float((f_logits - x_logits).abs().max())   # the same prefill code: 0 expected
    faithful_routing: list[torch.Tensor] = []
    hooks = [moe.register_forward_pre_hook(lambda m, args: faithful_routing.append(
        route(args[0].reshape(-1, args[0].shape[-1]), m.gate.weight, m.top_k)[1])) for moe in moe_layers]
    argmax_same, routing_same, layer_steps_same, max_diff, max_logit, mismatches = 0, 0, 0, 0.0, 0.0, []
    try:
        for i, token in enumerate(reference):
            ids = torch.tensor([[token]], device=device)
            faithful_routing.clear()
            f = f_step(ids)
            x = x_step(ids)
            same_sets = [torch.equal(a.sort(dim=-1).values, b.sort(dim=-1).values)
                         for a, b in zip(faithful_routing, static.expert_ids, strict=True)]
            routing_same += all(same_sets)
            layer_steps_same += sum(same_sets)
            max_diff = max(max_diff, float((f - x).abs().max()))
            max_logit = max(max_logit, float(f.abs().max()))
            fa, xa = int(f.argmax()), int(x.argmax())
            if fa == xa:
                argmax_same += 1
            else:   # how close was the faithful engine's own call? (a near tie flips on rounding)
                mismatches.append({"step": i, "faithful": fa, "fast": xa,
                                   "faithful_margin": float(f[0, fa] - f[0, xa])})
    finally:
        for h in hooks:
            h.remove()
    n = len(reference)
    return {"steps": n, "moe_layers": len(moe_layers), "fast_cuda_graph": static.graph is not None,
            "fast_grouped_experts": static.decoder.grouped_experts,
            "capacity": static.capacity, "prefill_max_abs_logit_diff": prefill_diff,
            "argmax_agree": argmax_same, "argmax_agree_share": argmax_same / n,
            "routing_agree_steps": routing_same, "routing_agree_share": routing_same / n,
            "routing_agree_layer_steps": layer_steps_same, "routing_layer_steps": n * len(moe_layers),
            "max_abs_logit_diff": max_diff, "max_abs_logit": max_logit, "argmax_mismatches": mismatches}


@contextlib.contextmanager
def math_attention():
    """PyTorch's math SDPA kernel for the decoder: the decoder picks its backends itself on CUDA
    (decoder.DECODER_SDPA_BACKENDS, an inner context that would override an outer one)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dsocr_perf.dsocr import decoder

    chosen = decoder.DECODER_SDPA_BACKENDS
    decoder.DECODER_SDPA_BACKENDS = [SDPBackend.MATH]
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        decoder.DECODER_SDPA_BACKENDS = chosen


def rounding_floor(check: Check, reference: list[int]) -> dict:
    """The faithful engine against itself with the math SDPA kernel, teacher-forced on `reference`:
    the share of steps whose argmax and top-k expert sets survive a change of attention kernel alone."""
    import torch

    from dsocr_perf.dsocr.decoder import MoE, route

    device = check.session.device
    moe_layers = [layer.mlp for layer in check.model.model.layers if isinstance(layer.mlp, MoE)]
    a_logits, a_step, _ = check.start("faithful", len(reference))
    with math_attention():
        b_logits, b_step, _ = check.start("faithful", len(reference))
    routing: list[torch.Tensor] = []
    hooks = [moe.register_forward_pre_hook(lambda m, args: routing.append(
        route(args[0].reshape(-1, args[0].shape[-1]), m.gate.weight, m.top_k)[1].sort(dim=-1).values))
        for moe in moe_layers]
    argmax_same, routing_same, layer_steps_same, max_diff = 0, 0, 0, 0.0
    try:
        for token in reference:
            ids = torch.tensor([[token]], device=device)
            routing.clear()
            a = a_step(ids)
            with math_attention():
                b = b_step(ids)
            half = len(routing) // 2
            same_sets = [torch.equal(x, y) for x, y in zip(routing[:half], routing[half:], strict=True)]
            routing_same += all(same_sets)
            layer_steps_same += sum(same_sets)
            argmax_same += int(a.argmax()) == int(b.argmax())
            max_diff = max(max_diff, float((a - b).abs().max()))
    finally:
        for h in hooks:
            h.remove()
    n = len(reference)
    return {"steps": n, "argmax_agree": argmax_same, "argmax_agree_share": argmax_same / n,
            "routing_agree_steps": routing_same, "routing_agree_share": routing_same / n,
            "routing_agree_layer_steps": layer_steps_same, "routing_layer_steps": n * len(moe_layers),
            "prefill_max_abs_logit_diff": float((a_logits - b_logits).abs().max()), "max_abs_logit_diff": max_diff}


def speed(check: Check, engine: str, tokens: int, warmup: int, runs: int) -> dict:
    device = check.session.device
    per_run, token_ids = [], None
    for _ in range(runs):
        stamps: list[float] = []
        ids = check.greedy(engine, tokens, stamps)
        sync(device)
        stamps.append(time.perf_counter())
        steps = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
        per_run.append(1000.0 * sum(steps) / len(steps))
        token_ids = token_ids or ids
    ms = statistics.median(per_run)
    return {"ms_per_token": ms, "tokens_per_s": 1000.0 / ms, "runs_ms_per_token": per_run, "token_ids": token_ids}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(args) -> dict:
    import torch

    from dsocr_perf.dsocr.fast import FastDecoder
    from dsocr_perf.dsocr.session import Session

    session = Session.create(args.preset, args.weights, seed=args.seed, device=args.device)
    fast = FastDecoder(session.model, cuda_graph=False if args.no_graph else None)
    device = session.device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    _, views, prompt_ids = session.prepare_page(args.image, mode=args.mode)
    w = views.workload
    image_embeds = session.model.image_embeddings(views.tiles, views.global_view, w.tile_grid)
    check = Check(session, fast, prompt_ids, image_embeds)
    print(f"engine check: {args.preset} preset, {str(session.dtype).removeprefix('torch.')}, {device} ({gpu}), "
          f"weights {session.weights_source} (seed {args.seed}); {Path(args.image).name}, {w.mode} "
          f"{w.tile_grid[0]}x{w.tile_grid[1]}, {w.prompt_tokens} prompt tokens", flush=True)

    reference = check.greedy("faithful", args.tokens)
    a = agreement(check, reference)
    print(f"(a) teacher-forced, {a['steps']} steps of the faithful engine's greedy tokens (fast engine: "
          f"{'one CUDA graph replay' if a['fast_cuda_graph'] else 'eager'} per step, "
          f"{'grouped' if a['fast_grouped_experts'] else 'gathered'} experts, {a['capacity']}-position cache):")
    print(f"    argmax agrees         {a['argmax_agree']}/{a['steps']} steps ({100 * a['argmax_agree_share']:.1f}%)")
    print(f"    top-k expert sets     {a['routing_agree_steps']}/{a['steps']} steps agree in all {a['moe_layers']} "
          f"MoE layers ({100 * a['routing_agree_share']:.1f}%); {a['routing_agree_layer_steps']}/"
          f"{a['routing_layer_steps']} layer-steps")
    print(f"    max |logit diff|      {a['max_abs_logit_diff']:.4g} (largest |logit| {a['max_abs_logit']:.4g}; "
          f"after the prefill {a['prefill_max_abs_logit_diff']:.4g})")
    if a["argmax_mismatches"]:
        worst = max(m["faithful_margin"] for m in a["argmax_mismatches"])
        print(f"    argmax differs at steps {[m['step'] for m in a['argmax_mismatches']][:20]}; the faithful "
              f"logit margin there is at most {worst:.4g}")

    floor = rounding_floor(check, reference)
    print(f"    floor: the faithful engine against itself with the math attention kernel: argmax "
          f"{floor['argmax_agree']}/{floor['steps']} ({100 * floor['argmax_agree_share']:.1f}%), expert sets "
          f"{floor['routing_agree_steps']}/{floor['steps']} steps ({100 * floor['routing_agree_share']:.1f}%), "
          f"{floor['routing_agree_layer_steps']}/{floor['routing_layer_steps']} layer-steps; max |logit diff| "
          f"{floor['max_abs_logit_diff']:.4g}")

    timed = {engine: speed(check, engine, args.speed_tokens, args.warmup_tokens, args.runs)
             for engine in ("faithful", "fast")}
    ratio = timed["faithful"]["ms_per_token"] / timed["fast"]["ms_per_token"]
    same = common_prefix(timed["faithful"]["token_ids"], timed["fast"]["token_ids"])
    print(f"(b) greedy decode of {args.speed_tokens} tokens, no profiler, first {args.warmup_tokens} steps left out, "
          f"median of {args.runs} run(s):")
    print(f"    {'engine':<10}{'ms/token':>10}{'tokens/s':>11}   runs (ms/token)")
    for engine, t in timed.items():
        runs = ", ".join(f"{v:.3f}" for v in t["runs_ms_per_token"])
        print(f"    {engine:<10}{t['ms_per_token']:>10.3f}{t['tokens_per_s']:>11.1f}   {runs}")
    print(f"    speed-up fast / faithful: {ratio:.2f}x; free-running greedy tokens identical for the first {same} "
          f"of {args.speed_tokens}")
    return {
        "preset": args.preset, "dtype": str(session.dtype).removeprefix("torch."), "device": str(device),
        "gpu": gpu, "torch": torch.__version__, "weights": session.weights_source, "seed": args.seed,
        "image": str(args.image), "workload": w.to_dict(),
        "agreement": a, "rounding_floor": floor,
        "speed": {"tokens": args.speed_tokens, "warmup_tokens": args.warmup_tokens, "runs": args.runs,
                  "faithful": timed["faithful"], "fast": timed["fast"], "speedup": ratio,
                  "greedy_common_prefix": same},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"Error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    import torch

    from dsocr_perf.dsocr.errors import DsocrError

    try:
        with torch.inference_mode():
            result = run(args)
    except DsocrError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print("Error: GPU out of memory; try fewer --tokens or --mode base", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
