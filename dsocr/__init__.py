"""DeepSeek-OCR v1 as a profiling workload: presets, preprocessing, the native model, stage ranges."""
