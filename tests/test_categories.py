"""Kernel categories on real kernel names from the fixtures and third-party traces in ../shared."""
import gzip
import json
import sqlite3

import duckdb
import pytest

from dsocr_perf.analyze.metrics.categories import (
    CATEGORIES,
    CATEGORY_PATTERNS,
    categorize,
    category_case_sql,
    category_table_sql,
    create_category_table,
)

NSYS_FILES = [
    "fixtures/nsys/nvtx-features-2025.3.sqlite",
    "fixtures/nsys/tiny-2025.3.sqlite",
    "traces/nsys-sqlite/nsys-2022.1.3_dlprof_wrelu_nsys_profile.sqlite",
    "traces/nsys-sqlite/nsys-2023.1.2_memfusion_trt_resnet_report1.sqlite",
    "traces/nsys-sqlite/nsys-2024.5.1_knn_benchmark_profile_report.sqlite",
    "traces/nsys-sqlite/nsys-2026.2.1_nsys-ai_h100_2gpu_fastvideo_window.sqlite",
]
KINETO_FILES = [
    "traces/kineto/kineto-2024_switchtransformers_moe_trace.json",
    "traces/kineto/kineto-2022_hta_trace_diff_control.json.gz",
    "traces/kineto/kineto-2024_hta_nccl_data_basetime.json.gz",
    "traces/kineto/kineto-2025_particle_transformer_chrome_trace.json",
    "traces/kineto/kineto-2024_hta_triton_example.json.gz",
]


@pytest.fixture(scope="module")
def real_names(shared):
    """Every distinct kernel name in the files above (nsys demangled names and Kineto kernel names)."""
    names = set()
    for rel in NSYS_FILES:
        con = sqlite3.connect(f"file:{shared / rel}?mode=ro", uri=True)
        names.update(n for (n,) in con.execute(
            "SELECT DISTINCT s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.demangledName"))
        con.close()
    for rel in KINETO_FILES:
        path = shared / rel
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            events = json.load(f)["traceEvents"]
        names.update(e["name"] for e in events if e.get("cat") == "kernel")
    return sorted(names)


# (a substring that picks real names, the category every one of them must get). Each key must match
# at least one real name, so the test fails if the fixtures stop containing it.
EXPECTED = [
    # GEMM: cuBLAS (nvjet on H100, sm80_xmma, ampere/volta sgemm, gemv), CUTLASS, cuDNN convolutions
    ("nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT", "gemm"),
    ("cutlass_80_simt_sgemm_256x128_8x4_nn_align1", "gemm"),
    ("ampere_sgemm_128x64_nn", "gemm"),
    ("ampere_fp16_s16816gemm", "gemm"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize64x256x8", "gemm"),
    ("cutlass_80_tensorop_s1688gemm", "gemm"),
    ("internal::gemvx::kernel", "gemm"),
    ("splitKreduce_kernel", "gemm"),
    ("volta_scudnn_winograd", "gemm"),
    ("sm80_xmma_fprop_implicit_gemm_indexed", "gemm"),   # 'indexed' must not make it moe
    ("trt_ampere_h16816gemm", "gemm"),
    # MoE routing / gather / scatter / index
    ("sbtopk::gatherTopK", "moe"),
    ("cub::DeviceRadixSortOnesweepKernel", "moe"),
    ("_scatter_gather_elementwise_kernel", "moe"),
    ("indexSelectLargeIndex", "moe"),
    ("index_elementwise_kernel", "moe"),
    ("vectorized_gather_kernel", "moe"),
    ("indexFuncLargeIndex", "moe"),                       # index_add: 'ReduceAdd' must not make it a reduction
    # elementwise and normalisation
    ("GeluCUDAKernelImpl", "elementwise"),
    ("direct_copy_kernel_cuda", "elementwise"),
    ("FillFunctor<c10::BFloat16>", "elementwise"),
    ("vectorized_layer_norm_kernel", "elementwise"),
    ("LayerNormForwardCUDAKernel", "elementwise"),
    ("RowwiseMomentsCUDAKernel", "elementwise"),
    ("bn_fw_tr_1C11_singleread", "elementwise"),
    ("CatArrayBatchedCopy", "elementwise"),
    ("distribution_elementwise_grid_stride_kernel", "elementwise"),
    ("rsqrt_kernel_cuda", "elementwise"),
    ("triton_poi_fused_add_cos_sin_0", "elementwise"),
    # reduction and softmax
    ("softmax_warp_forward", "reduction"),
    ("softmax_warp_backward", "reduction"),
    ("reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, at::native::MeanOps", "reduction"),
    ("max_pool_forward_nchw", "reduction"),
    ("cub::DeviceScanKernel", "reduction"),
    # communication
    ("ncclKernel_AllReduce_RING_LL_Sum_float", "communication"),
    ("ncclKernel_SendRecv", "communication"),
    # other
    ("split_embedding_codegen_forward_unweighted_kernel", "other"),
    ("compute_distances(", "other"),
]


@pytest.mark.parametrize("needle, category", EXPECTED)
def test_real_names(real_names, needle, category):
    matching = [n for n in real_names if needle in n]
    assert matching, f"no real kernel name contains {needle!r}"
    assert {categorize(n) for n in matching} == {category}


# No fixture in ../shared contains a fused-attention kernel (the fastvideo window has none), so these
# are names as the libraries print them: PyTorch SDPA flash / mem-efficient, FlashAttention-2/3, vLLM.
ATTENTION_NAMES = [
    "void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
    "cutlass::bfloat16_t, pytorch_flash::Flash_kernel_traits<64, 128, 128, 4, cutlass::bfloat16_t>>, false, false, "
    "false, false, true, true, false, false>(pytorch_flash::Flash_fwd_params)",
    "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
    "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)",
    "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90"
    "<2, cute::tuple<cute::C<1>, cute::C<1>, cute::C<1>>>>>>(T1::Params)",
    "void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, cutlass::half_t>>"
    "(flash::Flash_fwd_params)",
    "void vllm::paged_attention_v1_kernel<unsigned short, unsigned short, 128, 16, 128>(unsigned short*, ...)",
]


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_attention_names(name):
    assert categorize(name) == "attention"


def test_memory_by_kind_and_by_kineto_name():
    assert categorize("Memcpy HtoD (Pinned -> Device)", "memcpy") == "memory"
    assert categorize("Memset (Device)", "memset") == "memory"
    assert categorize("anything at all", "memcpy") == "memory"
    # Kineto names gpu_memcpy events like this; the name alone says memory too
    assert categorize("Memcpy DtoD (Device -> Device)") == "memory"
    assert categorize(None) == "other"


def test_table_is_small_ordered_and_lowercase():
    assert CATEGORIES == ("memory", "communication", "attention", "gemm", "moe", "elementwise", "reduction", "other")
    for _, patterns in CATEGORY_PATTERNS:
        # plain lower-case words: the same meaning as a Python substring and inside an RE2 alternation
        assert all(p and p == p.lower() and p.replace("_", "").isalnum() for p in patterns)


def test_sql_case_equals_python(real_names):
    """DuckDB's CASE built from the same table labels every real name exactly like categorize()."""
    rows = [(n, "kernel") for n in real_names] + [("Memcpy HtoD", "memcpy"), ("Memset", "memset"),
                                                  ("it's quoted", "kernel"), (None, "kernel")]
    rows += [(n, "kernel") for n in ATTENTION_NAMES]
    con = duckdb.connect()
    con.execute("CREATE TABLE k(name VARCHAR, kind VARCHAR)")
    con.executemany("INSERT INTO k VALUES (?, ?)", rows)
    got = con.execute(f"SELECT name, kind, {category_case_sql('name', 'kind')} FROM k").fetchall()
    assert len(got) == len(rows) > 300
    for name, kind, category in got:
        assert category == categorize(name, kind), name
    # the distinct-name form gives the same labels
    distinct = dict(((n, k), c) for n, k, c in con.execute(category_table_sql("k")).fetchall())
    assert all(distinct[(n, k)] == c for n, k, c in got)
    table = create_category_table(con, "k")
    joined = con.execute(f"SELECT k.name, k.kind, c.category FROM k JOIN {table} c USING (name, kind)").fetchall()
    assert len(joined) == len(rows) - 1  # the NULL name does not join
    assert all(c == categorize(n, k) for n, k, c in joined)
    counts = dict(con.execute(
        f"SELECT {category_case_sql()} AS c, count(*) FROM k GROUP BY c").fetchall())
    assert set(counts) <= set(CATEGORIES)
    assert counts["memory"] == 2 and counts["attention"] == len(ATTENTION_NAMES)
