"""Readers: a trace file (nsys SQLite or Parquet export, PyTorch-profiler JSON) -> `Raw`, the NumPy
columns the engine attributes, plus the side tables (GPUs, metadata, NVTX marks, GPU metrics)."""
