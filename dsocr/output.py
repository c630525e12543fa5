"""Post-processing of the model's text: grounding markup -> boxes, result.mmd, overlay, crops (the markup the
vendor's run_dpsk_ocr scripts parse).

Markup: `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` followed by the element's content;
coordinates are integers on a 0-999 grid over the ORIGINAL image: pixel = v / 999 * width (or height).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

EOS_TEXT = "<｜end▁of▁sentence｜>"
GRID = 999
MARKUP = re.compile(r"<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>", re.DOTALL)
COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


@dataclass(frozen=True)
class Region:
    label: str
    box: tuple[int, int, int, int]          # pixels in the original image: x1, y1, x2, y2
    grid_box: tuple[int, int, int, int]     # as written by the model, 0..999


def clean_text(raw: str) -> str:
    """The decoded text without the trailing end-of-sentence token."""
    return raw[: -len(EOS_TEXT)] if raw.endswith(EOS_TEXT) else raw


def _boxes(det: str) -> list[tuple[int, int, int, int]]:
    """[[x1,y1,x2,y2], ...] -> list of 4-tuples; anything malformed gives no box (random weights write junk)."""
    try:
        value = ast.literal_eval(det.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, int) for v in value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [tuple(b) for b in value
            if isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, int) for v in b)]


def to_pixels(grid_box, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (min(max(v, 0), GRID) for v in grid_box)
    return (int(x1 / GRID * width), int(y1 / GRID * height), int(x2 / GRID * width), int(y2 / GRID * height))


def parse_regions(text: str, width: int, height: int) -> list[Region]:
    """Every labelled box in reading order."""
    return [Region(m.group(1).strip(), to_pixels(b, width, height), b)
            for m in MARKUP.finditer(text) for b in _boxes(m.group(2))]


def to_markdown(text: str, crop_links: list[str | None]) -> str:
    """Markup removed; each `image` box replaced by a markdown link to its crop (crop_links: one per image
    box in reading order, None where no crop was written)."""
    links = iter(crop_links)

    def replace(m: re.Match) -> str:
        if m.group(1).strip() != "image":
            return ""
        written = [next(links, None) for _ in _boxes(m.group(2))]
        return "".join(f"![]({link})\n" for link in written if link)

    return MARKUP.sub(replace, clean_text(text)).strip() + "\n"


def draw_overlay(image: Image.Image, regions: list[Region]) -> Image.Image:
    overlay = image.convert("RGB").copy()
    draw = ImageDraw.Draw(overlay)
    for i, r in enumerate(regions):
        color = COLORS[i % len(COLORS)]
        x1, y1, x2, y2 = r.box
        draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=color,
                       width=4 if r.label == "title" else 2)
        draw.text((min(x1, x2) + 3, max(min(y1, y2) - 12, 0)), r.label, fill=color)
    return overlay


def write_outputs(out_dir: str | Path, image: Image.Image, raw_text: str) -> dict[str, Path]:
    """raw.txt, result.mmd, overlay.png and images/N.png (one per `image` region) under out_dir."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    regions = parse_regions(raw_text, image.width, image.height)
    links = []
    for r in regions:
        if r.label != "image":
            continue
        x1, y1, x2, y2 = r.box
        box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            links.append(None)
            continue
        name = f"images/{len(links)}.png"
        image.crop(box).save(out / name)
        links.append(name)
    paths = {"raw": out / "raw.txt", "markdown": out / "result.mmd", "overlay": out / "overlay.png"}
    paths["raw"].write_text(raw_text, encoding="utf-8")
    paths["markdown"].write_text(to_markdown(raw_text, links), encoding="utf-8")
    draw_overlay(image, regions).save(paths["overlay"])
    return paths
