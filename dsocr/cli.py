"""`dsocr run IMAGE ...` (one page, text + stage timings + output files) and `dsocr shapes`."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from dsocr_perf.dsocr.config import ENGINES
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.extras import DefaultsHelpFormatter, capture_extra_hint, missing_capture_modules, package_version
from dsocr_perf.dsocr.workload import MAX_TILES_HF, MODES

DEFAULT_WEIGHTS = Path("models/deepseek-ocr")
PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "deepseek-ocr"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsocr", description="DeepSeek-OCR v1, segmented into NVTX stages",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="OCR one image: print the text and per-stage host times, write outputs",
                         formatter_class=DefaultsHelpFormatter)
    run.add_argument("image")
    run.add_argument("--mode", default="gundam", choices=list(MODES), help="image mode (gundam: 640-px tiles + a 1024-px view)")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--weights", metavar="DIR", help="checkpoint folder (default: models/deepseek-ocr/)")
    source.add_argument("--random-weights", action="store_true", help="seeded random weights (text is noise)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    run.add_argument("--preset", default="official", choices=["official", "tiny"],
                    help="model size: official (DeepSeek-OCR) or tiny (tests)")
    run.add_argument("--prompt", default=None, help="default: the grounding markdown prompt")
    run.add_argument("--max-new-tokens", type=int, default=256, help="decode steps per page at most")
    run.add_argument("--max-tiles", type=int, default=MAX_TILES_HF, help="Gundam tile limit (9 HF, 6 vLLM)")
    run.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    run.add_argument("--sync-stages", action="store_true", help="synchronise the GPU at stage ends")
    run.add_argument("--engine", default="faithful", choices=list(ENGINES),
                     help="decode engine: faithful (vendor-like, the default) or fast (static cache, CUDA graph)")
    run.add_argument("--out", metavar="DIR", help="write raw.txt, result.mmd, overlay.png, images/ here")
    run.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")

    shapes = sub.add_parser("shapes", help="state-dict key -> shape as JSON (meta device, no memory)",
                            formatter_class=DefaultsHelpFormatter)
    shapes.add_argument("--preset", default="official", choices=["official", "tiny"],
                    help="model size: official (DeepSeek-OCR) or tiny (tests)")
    return p


def resolve_weights(args) -> str | None:
    if args.random_weights:
        return None
    if args.weights:
        if not Path(args.weights).is_dir():
            raise DsocrError(f"weights folder not found: {args.weights} (see models/README.md, or use --random-weights)")
        return args.weights
    for folder in (DEFAULT_WEIGHTS, PACKAGE_WEIGHTS):
        if folder.is_dir():
            return str(folder)
    raise DsocrError("no checkpoint at models/deepseek-ocr/: place the deepseek-ai/DeepSeek-OCR files there "
                     "(models/README.md), pass --weights DIR, or run with --random-weights")


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DsocrError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DsocrError(f"--out {out} is not empty; pass --force to overwrite it or choose another folder")
        shutil.rmtree(out)


def cmd_run(args) -> int:
    import torch

    from dsocr_perf.dsocr.output import write_outputs
    from dsocr_perf.dsocr.session import DEFAULT_PROMPT, Session

    if args.max_new_tokens < 1:
        raise DsocrError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not Path(args.image).is_file():
        raise DsocrError(f"image file not found: {args.image}")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out, args.force)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and args.device is None and args.preset == "official":
        raise DsocrError("no CUDA GPU here: the official model on the CPU takes minutes and ~16 GB of memory per page; "
                         "pass --device cpu to run it anyway, or --preset tiny for a quick check")
    weights = resolve_weights(args)
    print(f"loading {args.preset} model ({'random weights, seed %d' % args.seed if weights is None else weights}) "
          f"on {device}, {args.engine} engine ...", file=sys.stderr)
    session = Session.create(args.preset, weights, seed=args.seed, device=device, engine=args.engine)
    result = session.run_page(args.image, mode=args.mode, prompt=args.prompt or DEFAULT_PROMPT,
                              max_new_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos,
                              max_tiles=args.max_tiles, sync_stages=args.sync_stages)
    print(result.text)
    w = result.workload
    print(f"\nworkload: {w.mode}, tiles {w.tile_grid[0]}x{w.tile_grid[1]}, image tokens {w.image_tokens}, "
          f"prompt tokens {w.prompt_tokens}, generated {result.generated_tokens}")
    for name, seconds in result.host_times_s.items():
        print(f"{name:>12}: {seconds * 1000:10.1f} ms")
    if result.decode_ms_per_token is not None:
        print(f"{'decode/token':>12}: {result.decode_ms_per_token:10.2f} ms")
    if result.peak_gpu_memory_bytes is not None:
        print(f"{'peak GPU mem':>12}: {result.peak_gpu_memory_bytes / 2**30:10.2f} GiB")
    if out is not None:
        paths = write_outputs(out, result.image, result.text)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_shapes(args) -> int:
    from dsocr_perf.dsocr.config import load_preset
    from dsocr_perf.dsocr.weights import meta_model, shape_table

    table = shape_table(meta_model(load_preset(args.preset)))
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items()]   # one key per line
    print("{\n" + ",\n".join(lines) + "\n}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    missing = missing_capture_modules()
    if missing:
        print(f"Error: {capture_extra_hint('dsocr', missing)}", file=sys.stderr)
        return 2
    try:
        return cmd_run(args) if args.command == "run" else cmd_shapes(args)
    except DsocrError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # e.g. `dsocr shapes | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the GPU running out of memory is a user-facing condition
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            print("Error: GPU out of memory; use a smaller --mode, fewer --max-new-tokens, or a larger GPU",
                  file=sys.stderr)
            return 2
        raise
