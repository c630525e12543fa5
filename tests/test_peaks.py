"""The peaks table: device names as the driver spells them map to the right datasheet row."""
import pytest

from dsocr_perf.analyze.metrics import peaks


@pytest.mark.parametrize("name, row", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),        # the name TARGET_INFO_GPU gives an H100 SXM5
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ("NVIDIA A40", "A40"),
    ("NVIDIA RTX A6000", "RTX A6000"),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
    ("Tesla T4", "T4"),
])
def test_driver_names_find_their_row(name, row):
    assert peaks.find_gpu(name).key == row


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 4090 D", "NVIDIA GH200 480GB",
                                  "NVIDIA A10G", "AMD Instinct MI300X", "", None])
def test_lookalikes_and_strangers_are_unknown(name):
    assert peaks.find_gpu(name) is None


def test_h100_sxm_peaks_and_ridge_point():
    p = peaks.resolve_peaks("NVIDIA H100 80GB HBM3", "torch.bfloat16")
    assert (p.row, p.peak_tflops, p.peak_gbs) == ("H100 SXM", 989.4, 3350)
    assert p.message is None and "whitepaper" in p.source
    # ridge = 989.4e12 FLOP/s / 3350e9 B/s = 295.3 FLOP/B
    assert p.ridge_flops_per_byte == pytest.approx(295.34, abs=0.01)


def test_dtype_picks_the_column():
    assert peaks.resolve_peaks("NVIDIA A100-SXM4-80GB", "float32").peak_tflops == 19.5
    assert peaks.resolve_peaks("NVIDIA A100-SXM4-80GB", "tf32").peak_tflops == 156
    assert peaks.resolve_peaks("NVIDIA GeForce RTX 4090", "float16").peak_tflops == 165.2


def test_overrides_win_and_are_named_as_source():
    p = peaks.resolve_peaks("NVIDIA H100 80GB HBM3", peak_tflops=500, peak_gbs=2000)
    assert (p.peak_tflops, p.peak_gbs) == (500, 2000)
    assert p.source == "--peak-tflops; --peak-gbs"
    with pytest.raises(ValueError, match="--peak-gbs must be a positive number"):
        peaks.resolve_peaks("NVIDIA H100 PCIe", peak_gbs=0)


def test_unknown_gpu_gives_a_message_not_a_crash():
    p = peaks.resolve_peaks("Imaginary GPU 9000")
    assert p.peak_tflops is None and p.peak_gbs is None and p.ridge_flops_per_byte is None
    assert p.message == ("GPU 'Imaginary GPU 9000' is not in the peaks table: MFU/MBU left empty; "
                         "pass --peak-tflops and --peak-gbs to set them")
    # the trace's own TARGET_INFO_GPU.memoryBandwidth still gives MBU
    p = peaks.resolve_peaks("Imaginary GPU 9000", trace_bandwidth_Bps=3_352_320_000_000)
    assert p.peak_gbs == pytest.approx(3352.32) and p.message.endswith("pass --peak-tflops to set them")


def test_t4_has_no_bf16_tensor_cores():
    p = peaks.resolve_peaks("Tesla T4", "bfloat16")
    assert p.peak_tflops is None and p.peak_gbs == 320 and "T4 has no bf16 tensor peak" in p.message


def test_every_row_has_a_source_and_tf32_is_half_of_bf16():
    for row in peaks.peaks_table():
        assert row["source"] and row["mem_gbs"] > 0
        if row["bf16_tflops"]:
            assert row["tf32_tflops"] == pytest.approx(row["bf16_tflops"] / 2, rel=0.02)


@pytest.mark.parametrize("name, row", [
    ("NVIDIA A100-PG509-200", "A100 SXM 40GB"),      # 42 GB board in the HTA Kineto traces
    ("Tesla V100-SXM2-32GB", "V100 SXM2"),
    ("Tesla V100-DGXS-32GB", "V100 SXM2"),
    ("Quadro RTX 6000", "Quadro RTX 6000"),
    ("NVIDIA GeForce RTX 3080", "RTX 3080"),
])
def test_names_seen_in_the_shared_traces(name, row):
    assert peaks.find_gpu(name, total_memory_bytes=42_297_524_224).key == row


def test_total_memory_picks_the_80gb_a100_when_the_name_does_not_say():
    assert peaks.find_gpu("NVIDIA A100-PG509-200", 85_000_000_000).key == "A100 SXM 80GB"
    assert peaks.find_gpu("NVIDIA A100-PCIE-40GB", 42_505_273_344).key == "A100 PCIe 40GB"


def test_table_bandwidth_agrees_with_what_nsys_recorded(shared):
    """TARGET_INFO_GPU.memoryBandwidth (B/s) of the real exports vs the datasheet column, within 1 %."""
    import sqlite3
    checked = set()
    for path in sorted((shared / "traces" / "nsys-sqlite").glob("*.sqlite")):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            gpus = con.execute("SELECT name, totalMemory, memoryBandwidth FROM TARGET_INFO_GPU").fetchall()
        except sqlite3.OperationalError:
            con.close()
            continue                                   # the 2026.2.1 window cut has no TARGET_INFO_GPU
        for name, memory, bandwidth in gpus:
            row = peaks.find_gpu(name, memory)
            if row is not None:
                assert row.mem_gbs == pytest.approx(bandwidth / 1e9, rel=0.01), name
                checked.add(row.key)
        con.close()
    # RTX 3090, A40, A100 PCIe 40GB, T4, Quadro RTX 6000, RTX 3080 are in the shared exports
    assert {"RTX 3090", "A40", "A100 PCIe 40GB", "T4", "Quadro RTX 6000", "RTX 3080"} <= checked
