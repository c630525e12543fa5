"""Roofline plot: one point per stage (arithmetic intensity, achieved TFLOP/s) under the GPU's roofs.

The roof is min(peak FLOP/s, intensity x peak bandwidth): a bandwidth slope up to the ridge point
(peak FLOP/s / peak B/s), then the flat compute ceiling. Points come from `analyze.metrics`
rows (keys name, stage, intensity, tflops). matplotlib is imported only when a plot is drawn, so the
rest of the analysis does not need it.
"""
from __future__ import annotations

from pathlib import Path

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.paths import atomic_path, check_output

FORMATS = ("png", "svg")


def roofline_points(rows: list[dict]) -> list[dict]:
    """The rows that can be placed: a modelled stage with intensity and achieved TFLOP/s."""
    return [r for r in rows if r.get("intensity") and r.get("tflops")]


def plot_roofline(rows: list[dict], gpu: dict, out_stem, *, title: str | None = None,
                  force: bool = False, inputs: tuple = ()) -> list[Path]:
    """Write OUT_STEM.png and OUT_STEM.svg; return their paths.

    `gpu`: the `gpu` object of `stage_metrics` extras (name, peak_tflops, peak_gbs). Without peaks the
    points are drawn without roofs. Raises TraceError when there is nothing to plot, OutputError when
    a file exists and `force` is False, or would be one of `inputs`, or its folder does not exist
    (the rules of analyze.paths.check_output); each file is written through a temporary file.
    """
    points = roofline_points(rows)
    if not points:
        raise TraceError("no stage has both FLOPs and GPU time, so there is nothing to put on a roofline: "
                         "give a trace with a dsocr manifest (inside it or NAME.json beside it)")
    out_stem = Path(out_stem)
    paths = [out_stem.with_name(f"{out_stem.name}.{ext}") for ext in FORMATS]
    for path in paths:
        check_output(path, force, "--roofline", inputs=inputs)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak_tflops, peak_gbs = gpu.get("peak_tflops"), gpu.get("peak_gbs")
    xs = [p["intensity"] for p in points]
    lo = min(xs + [1.0]) / 3
    hi = max(xs + [1.0]) * 3
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if peak_tflops and peak_gbs:
        ridge = peak_tflops * 1e3 / peak_gbs                     # FLOP/B
        hi = max(hi, ridge * 3)
        ax.plot([lo, ridge, hi], [lo * peak_gbs / 1e3, peak_tflops, peak_tflops], color="black", lw=1.5,
                label=f"roof: {peak_gbs:,.0f} GB/s, {peak_tflops:,.1f} TFLOP/s (ridge {ridge:.0f} FLOP/B)")
    elif peak_tflops:
        ax.axhline(peak_tflops, color="black", lw=1.5, label=f"compute ceiling {peak_tflops:,.1f} TFLOP/s")
    placed: dict[tuple[float, float], list[str]] = {}        # decode and decode_step share a point
    for p in points:
        placed.setdefault((p["intensity"], p["tflops"]), []).append(p.get("stage") or p["name"])
    markers = "os^Dvp*hX<>"
    for i, ((x, y), labels) in enumerate(sorted(placed.items(), key=lambda kv: -kv[0][1])):
        ax.scatter(x, y, s=55, zorder=3, marker=markers[i % len(markers)],
                   label=f"{', '.join(labels)}: {y:,.1f} TFLOP/s at {x:,.1f} FLOP/B")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, modelled HBM traffic)")
    ax.set_ylabel("achieved TFLOP/s (over busy GPU time)")
    ax.set_title(title or f"Roofline: {gpu.get('name') or 'unknown GPU'}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=path.suffix[1:], dpi=150 if path.suffix == ".png" else None)
    finally:
        plt.close(fig)
    return paths
