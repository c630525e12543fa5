"""Build DeepseekOCR on a device: seeded random weights, or a local safetensors checkpoint folder.

Both paths create the module tree on the meta device (no memory, no init cost) and materialise it
directly on the target device in the target dtype with `to_empty`, so the 3.3B official preset is
ready on a GPU in seconds. Random weights come from one seeded `torch.Generator` on that device.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dsocr_perf.dsocr.config import ModelConfig
from dsocr_perf.dsocr.errors import DsocrError
from dsocr_perf.dsocr.model import DeepseekOCR

DEFAULT_WEIGHTS_DIR = Path("models/deepseek-ocr")
INIT_STD = 0.02          # initializer_range of the decoder config; used for every matrix here
# In the vendor module tree (a CLIP buffer) but not in the checkpoint: tolerated, never required.
IGNORED_KEYS = {"model.vision_model.embeddings.position_ids"}


class WeightsError(DsocrError):
    pass


class _NoRandomInit(TorchFunctionMode):
    """While a module tree is built on the meta device, random initialisers do nothing and random factories
    return empty tensors: random numbers on meta are meaningless, and the first random op there costs seconds
    (torch imports its compiler stack to run it; 2.7 s of a 2.8 s tiny-preset build on a CPU host)."""

    FACTORIES = {"randn", "rand"}
    IN_PLACE = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_",
                "geometric_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.FACTORIES:
            return torch.empty(*args, **kwargs)
        target = args[0] if args else kwargs.get("tensor")   # torch.nn.init passes its tensor by keyword
        if name in self.IN_PLACE and isinstance(target, torch.Tensor):
            return target
        return func(*args, **kwargs)


def meta_model(config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> DeepseekOCR:
    """The module tree on the meta device: shapes and names only (FLOP counting, `shapes`, and the skeleton that
    `random_model` and `load_model` fill)."""
    with torch.device("meta"), _NoRandomInit():
        return DeepseekOCR(config).to(dtype)


def shape_table(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def init_random(model: DeepseekOCR, seed: int) -> None:
    """Deterministic weights from `seed` on the model's device: N(0, 0.02) for matrices, embeddings and
    learned vectors; ones/zeros for norm weights/biases; zeros for other biases."""
    device = model.lm_head.weight.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for _module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if _is_norm(module):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
    dim = model.config.projector.n_embed
    for vector in (model.model.image_newline, model.model.view_seperator):   # vendor init: N(0, 1/dim)
        vector.normal_(0.0, dim ** -0.5, generator=gen)


def random_model(config: ModelConfig, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> DeepseekOCR:
    model = meta_model(config, dtype).to_empty(device=device)
    init_random(model, seed)
    return model.eval()


# ------------------------------------------------------------------------------------ checkpoints

def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: those named by the index json, else every *.safetensors."""
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder} (see models/README.md, or use --random-weights)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{index}: not a safetensors index ({exc})") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise WeightsError(f"{folder}: the index names {', '.join(missing)} but the file is not there")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder}: no *.safetensors file (expected model-00001-of-000001.safetensors; "
                           "see models/README.md)")
    return files


def check_config(folder: Path, config: ModelConfig) -> None:
    """If the folder has a config.json, its decoder sizes must match the preset."""
    path = folder / "config.json"
    if not path.is_file():
        return
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from None
    raw = raw.get("language_config", raw)
    d = config.decoder
    wrong = [f"{k} {raw[k]} != {getattr(d, k)}" for k in
             ("vocab_size", "hidden_size", "num_hidden_layers", "n_routed_experts", "num_experts_per_tok")
             if k in raw and raw[k] != getattr(d, k)]
    if wrong:
        raise WeightsError(f"{path} does not describe preset {config.name!r}: {'; '.join(wrong)}")


def _few(items, n: int = 3) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def compare_keys(expected: dict[str, list[int]], found: dict[str, list[int]], where: str) -> None:
    """One error naming missing, unexpected and misshapen keys (a few of each, with counts)."""
    found = {k: v for k, v in found.items() if k not in IGNORED_KEYS}
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshapen = [f"{k} {found[k]} (expected {expected[k]})" for k in expected.keys() & found.keys()
                 if list(found[k]) != list(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} misshapen: {_few(misshapen)}")
    if problems:
        raise WeightsError(f"{where} does not match the model ({'; '.join(problems)}); "
                           "is it the deepseek-ai/DeepSeek-OCR checkpoint and the right --preset?")


@torch.no_grad()
def load_model(config: ModelConfig, folder: str | Path, device: str | torch.device, dtype: torch.dtype) -> DeepseekOCR:
    """The model with every tensor from the checkpoint folder, cast to `dtype` on `device`."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    check_config(folder, config)
    files = checkpoint_files(folder)
    model = meta_model(config, dtype).to_empty(device=device)
    params = model.state_dict()
    try:
        handles = [safe_open(str(f), framework="pt", device=str(device)) for f in files]
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{folder}: cannot read safetensors ({exc})") from None
    found = {k: list(h.get_slice(k).get_shape()) for h in handles for k in h.keys()}
    compare_keys(shape_table(model), found, str(folder))
    for h in handles:
        for k in h.keys():
            if k in params:
                params[k].copy_(h.get_tensor(k))
    return model.eval()


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write the state dict as one safetensors file (contiguous copies, as safetensors requires)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
