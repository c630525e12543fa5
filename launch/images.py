"""The pages of a capture: IMAGE may be one image, a folder of images, or a .txt list (one path a line).

Every page is opened and checked in the parent before any profiler starts, so a bad image costs
a second, not a model load.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dsocr_perf.launch.errors import LaunchError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class PageImage:
    path: str
    width: int
    height: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height, "sha256": self.sha256}


def list_images(arg: str) -> list[Path]:
    """The image paths named by IMAGE, in order (folders sorted by file name)."""
    source = Path(arg)
    if not source.exists():
        raise LaunchError(f"{arg}: no such file or folder; give an image, a folder of images or a .txt list")
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise LaunchError(f"{arg}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return paths
    if source.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in source.read_text(errors="replace").splitlines()]
        paths = [_list_entry(source, ln) for ln in lines if ln and not ln.startswith("#")]
        if not paths:
            raise LaunchError(f"{arg}: the list names no images (one path per line; # starts a comment)")
        return paths
    return [source]


def _list_entry(list_file: Path, line: str) -> Path:
    """A relative entry is taken beside the list file, else from the current folder."""
    path = Path(line)
    if path.is_absolute() or not (list_file.parent / path).exists():
        return path
    return list_file.parent / path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_image(path: Path) -> PageImage:
    """Open the image the way the session will (dsocr.preprocess.load_image); LaunchError if unusable."""
    from dsocr_perf.dsocr.preprocess import ImageError, load_image

    if not path.is_file():
        raise LaunchError(f"{path}: no such image file")
    try:
        image = load_image(path)
    except ImageError as e:
        raise LaunchError(str(e)) from None
    return PageImage(str(path), image.width, image.height, sha256(path))


def resolve_pages(arg: str) -> list[PageImage]:
    return [check_image(p) for p in list_images(arg)]
