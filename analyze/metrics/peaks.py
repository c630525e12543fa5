"""Hardware peaks: one table of GPUs -> dense tensor TFLOP/s and memory bandwidth, with sources.

All TFLOP/s are DENSE (no 2:4 sparsity: datasheets print the sparse figure with an asterisk; we
halve it). bf16/fp16 are tensor-core rates with FP32 accumulate, the mode PyTorch uses (GeForce
cards run FP16-accumulate twice as fast; PyTorch never uses it). tf32 is the tensor-core TF32 rate;
fp32 the non-tensor CUDA-core rate. Bandwidth is the datasheet's HBM/GDDR figure in GB/s (10^9 B/s).

The trace names its GPU in `TARGET_INFO_GPU.name` (nsys) and in the manifest's
`environment.gpu_name` (torch.cuda.get_device_name); both are the driver's marketing name, e.g.
'NVIDIA H100 80GB HBM3' (= H100 SXM5), 'NVIDIA H100 PCIe', 'NVIDIA A100-SXM4-80GB',
'NVIDIA GeForce RTX 4090'. `--peak-tflops` / `--peak-gbs` override the table; an unknown GPU
gives null MFU/MBU and a message saying to pass them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    key: str                 # our name for the row
    pattern: str             # regex searched in the normalised device name (see normalise)
    bf16: float | None       # dense tensor TFLOP/s, FP32 accumulate (None: no bf16 tensor cores)
    fp16: float | None
    tf32: float | None
    fp32: float              # CUDA cores, non-tensor
    mem_gbs: float           # memory bandwidth, GB/s
    source: str

    def tflops(self, dtype: str) -> float | None:
        return getattr(self, PEAK_COLUMN[dtype])


# Ordered: the first row whose pattern matches wins, so specific rows precede catch-alls.
GPUS: tuple[GpuPeak, ...] = (
    GpuPeak("A100 PCIe 80GB", r"\ba100\b.*\b80gb\b.*\bpcie\b|\ba100\b.*\bpcie\b.*\b80gb\b",
            312, 312, 156, 19.5, 1935, "NVIDIA A100 Tensor Core GPU datasheet (PCIe 80GB column)"),
    GpuPeak("A100 PCIe 40GB", r"\ba100\b.*\bpcie\b",
            312, 312, 156, 19.5, 1555, "NVIDIA A100 Tensor Core GPU datasheet (PCIe 40GB column)"),
    GpuPeak("A100 SXM 80GB", r"\ba100\b.*\b80gb\b",
            312, 312, 156, 19.5, 2039, "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB column)"),
    GpuPeak("A100 SXM 40GB", r"\ba100\b",
            312, 312, 156, 19.5, 1555, "NVIDIA A100 Tensor Core GPU datasheet (SXM 40GB column)"),
    GpuPeak("H100 NVL", r"\bh100\b.*\bnvl\b",
            835.5, 835.5, 417.5, 60, 3900, "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column; sparse / 2)"),
    GpuPeak("H100 PCIe", r"\bh100\b.*\bpcie\b",
            756, 756, 378, 51.2, 2000, "NVIDIA H100 datasheet (PCIe column) and H100 architecture whitepaper"),
    GpuPeak("H100 SXM", r"\bh100\b",
            989.4, 989.4, 494.7, 66.9, 3350,
            "NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5) and datasheet (3.35 TB/s)"),
    GpuPeak("H200 NVL", r"\bh200\b.*\bnvl\b",
            835.5, 835.5, 417.5, 60, 4800, "NVIDIA H200 Tensor Core GPU datasheet (H200 NVL column; sparse / 2)"),
    GpuPeak("H200 SXM", r"\bh200\b",
            989.4, 989.4, 494.7, 66.9, 4800, "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column; sparse / 2)"),
    GpuPeak("B200", r"\bb200\b",
            2250, 2250, 1125, 75, 8000,
            "NVIDIA HGX B200 datasheet (8-GPU totals / 8; sparse / 2). The driver reports a 7,680-bit bus "
            "(~7.7 TB/s)"),
    GpuPeak("L40S", r"\bl40s\b",
            362.05, 362.05, 183, 91.6, 864, "NVIDIA L40S datasheet (sparse / 2)"),
    GpuPeak("L40", r"\bl40\b",
            181.05, 181.05, 90.5, 90.5, 864, "NVIDIA L40 datasheet (sparse / 2)"),
    GpuPeak("L4", r"\bl4\b",
            121, 121, 60, 30.3, 300, "NVIDIA L4 datasheet (sparse / 2)"),
    GpuPeak("RTX 6000 Ada", r"\brtx 6000 ada\b",
            364.2, 364.2, 182.1, 91.1, 960, "NVIDIA Ada Lovelace architecture whitepaper (RTX 6000 Ada)"),
    GpuPeak("RTX A6000", r"\brtx a6000\b",
            154.8, 154.8, 77.4, 38.7, 768, "NVIDIA RTX A6000 datasheet (309.7 sparse tensor TFLOPS / 2)"),
    GpuPeak("RTX 4090", r"\brtx 4090\b(?! (d|laptop)\b)",
            165.2, 165.2, 82.6, 82.6, 1008,
            "NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090, FP32 accumulate)"),
    GpuPeak("RTX 3090", r"\brtx 3090\b(?! (ti|laptop)\b)",
            71, 71, 35.6, 35.6, 936, "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce RTX 3090, FP32 accumulate)"),
    GpuPeak("A40", r"\ba40\b",
            149.7, 149.7, 74.8, 37.4, 696, "NVIDIA A40 datasheet (sparse / 2)"),
    GpuPeak("A10", r"\ba10\b",
            125, 125, 62.5, 31.2, 600, "NVIDIA A10 datasheet (sparse / 2)"),
    GpuPeak("RTX 3080", r"\brtx 3080\b(?! (ti|laptop)\b)",
            59.5, 59.5, 29.8, 29.8, 760, "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce RTX 3080, FP32 accumulate)"),
    GpuPeak("V100 PCIe", r"\bv100\b.*\bpcie\b",
            None, 112, None, 14, 900, "NVIDIA V100 Tensor Core GPU datasheet (PCIe column; no BF16/TF32)"),
    GpuPeak("V100 SXM2", r"\bv100\b",
            None, 125, None, 15.7, 900, "NVIDIA V100 Tensor Core GPU datasheet (SXM2 column; no BF16/TF32)"),
    GpuPeak("Quadro RTX 6000", r"^rtx 6000$",
            None, 130.5, None, 16.3, 672, "NVIDIA Quadro RTX 6000 datasheet (Turing; no BF16/TF32)"),
    GpuPeak("T4", r"\bt4\b",
            None, 65, None, 8.1, 320, "NVIDIA T4 datasheet (Turing: FP16 mixed precision, no BF16/TF32 tensor cores)"),
)

# Which column a run's dtype uses. fp32 matmuls use the CUDA cores unless TF32 is switched on
# (PyTorch's default for matmul is off), so fp32 -> fp32.
PEAK_COLUMN = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
               "float32": "fp32", "fp32": "fp32", "float": "fp32", "tf32": "tf32"}


def normalise(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx 4090'; 'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb'."""
    s = re.sub(r"[^a-z0-9]+", " ", name.lower())
    s = re.sub(r"\b(nvidia|geforce|tesla|quadro)\b", " ", s)
    return " ".join(s.split())


# Names that do not say the memory size (e.g. 'NVIDIA A100-PG509-200'): the device's total memory decides.
LARGER_MEMORY_VARIANT = {"A100 SXM 40GB": "A100 SXM 80GB", "A100 PCIe 40GB": "A100 PCIe 80GB"}


def find_gpu(name: str | None, total_memory_bytes: int | None = None) -> GpuPeak | None:
    """The table row for a device name, or None when the GPU is not in the table.

    `total_memory_bytes` (TARGET_INFO_GPU.totalMemory) picks the 80 GB A100 when the name does not say.
    """
    if not name:
        return None
    s = normalise(name)
    for row in GPUS:
        if re.search(row.pattern, s):
            if row.key in LARGER_MEMORY_VARIANT and total_memory_bytes and total_memory_bytes > 48e9:
                return next(g for g in GPUS if g.key == LARGER_MEMORY_VARIANT[row.key])
            return row
    return None


@dataclass(frozen=True)
class Peaks:
    """The peaks a report divides by, and where they came from."""

    gpu_name: str | None           # as the trace names it
    row: str | None                # matched table row, if any
    dtype: str
    peak_tflops: float | None
    peak_gbs: float | None
    source: str
    message: str | None = None     # set when a peak is missing: what to pass

    @property
    def ridge_flops_per_byte(self) -> float | None:
        if not self.peak_tflops or not self.peak_gbs:
            return None
        return self.peak_tflops * 1e12 / (self.peak_gbs * 1e9)

    def to_dict(self) -> dict:
        return {"name": self.gpu_name, "row": self.row, "dtype": self.dtype, "peak_tflops": self.peak_tflops,
                "peak_gbs": self.peak_gbs, "source": self.source}


def resolve_peaks(gpu_name: str | None, dtype: str | None = "bfloat16", *, peak_tflops: float | None = None,
                  peak_gbs: float | None = None, trace_bandwidth_Bps: float | None = None,
                  total_memory_bytes: int | None = None) -> Peaks:
    """Peaks for a run: overrides first, then the table, then the trace's own memory bandwidth.

    `trace_bandwidth_Bps` = TARGET_INFO_GPU.memoryBandwidth (bytes/s), used only for a GPU the table
    does not know.
    """
    dtype = str(dtype or "bfloat16").lower().removeprefix("torch.")
    if dtype not in PEAK_COLUMN:
        raise ValueError(f"unknown dtype {dtype!r} for peak lookup; expected one of {', '.join(PEAK_COLUMN)}")
    for label, value in (("--peak-tflops", peak_tflops), ("--peak-gbs", peak_gbs)):
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"{label} must be a positive number, got {value}")
    row = find_gpu(gpu_name, total_memory_bytes)
    sources = []
    tflops = peak_tflops
    if tflops is not None:
        sources.append("--peak-tflops")
    elif row is not None:
        tflops = row.tflops(dtype)
    gbs = peak_gbs
    if gbs is not None:
        sources.append("--peak-gbs")
    elif row is not None:
        gbs = row.mem_gbs
    elif trace_bandwidth_Bps:
        gbs = trace_bandwidth_Bps / 1e9
        sources.append("TARGET_INFO_GPU.memoryBandwidth")
    if row is not None and (peak_tflops is None or peak_gbs is None):
        sources.append(row.source)
    message = None
    if tflops is None or gbs is None:
        missing = " and ".join(flag for flag, v in (("--peak-tflops", tflops), ("--peak-gbs", gbs)) if v is None)
        if row is None:
            what = f"GPU {gpu_name!r} is not in the peaks table" if gpu_name else "the trace does not name its GPU"
        else:
            what = f"{row.key} has no {PEAK_COLUMN[dtype]} tensor peak"
        message = f"{what}: MFU/MBU left empty; pass {missing} to set them"
    return Peaks(gpu_name, row.key if row else None, dtype, tflops, gbs, "; ".join(sources) or "none", message)


def peaks_table() -> list[dict]:
    """The table as rows, for the README and `--json`."""
    return [{"gpu": g.key, "bf16_tflops": g.bf16, "fp16_tflops": g.fp16, "tf32_tflops": g.tf32,
             "fp32_tflops": g.fp32, "mem_gbs": g.mem_gbs, "source": g.source} for g in GPUS]
