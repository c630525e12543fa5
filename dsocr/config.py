"""Architecture presets (data in models/presets/*.json) as typed, read-only configs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class SamConfig:
    img_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    out_chans: int
    downsample_channels: tuple[int, int]


@dataclass(frozen=True)
class ClipConfig:
    width: int
    layers: int
    heads: int
    mlp_dim: int
    patch_size: int
    image_size: int

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # 257: CLS + 16x16


@dataclass(frozen=True)
class ProjectorConfig:
    input_dim: int
    n_embed: int


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    first_k_dense_replace: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    bos_token_id: int
    eos_token_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace


@dataclass(frozen=True)
class ModelConfig:
    name: str
    image_token_id: int
    sam: SamConfig
    clip: ClipConfig
    projector: ProjectorConfig
    decoder: DecoderConfig

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        sam = dict(d["sam"])
        sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
        sam["downsample_channels"] = tuple(sam["downsample_channels"])
        return cls(d["name"], int(d["image_token_id"]), SamConfig(**sam), ClipConfig(**d["clip"]),
                   ProjectorConfig(**d["projector"]), DecoderConfig(**d["decoder"]))


PRESETS = ("official", "tiny")
# Decode engines: the vendor-faithful one (the default, what traces study) and the CUDA-graph one (dsocr/fast.py).
ENGINES = ("faithful", "fast")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("dsocr_perf.models") / "presets" / f"{name}.json"))


def load_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    d = json.loads(preset_path(name).read_text())
    d.pop("description", None)
    return ModelConfig.from_dict(d)
