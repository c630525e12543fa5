"""Kernel categories from kernel names: one ordered table, used by Python and by DuckDB alike.

A GPU operation gets the category of the FIRST row below with a pattern that occurs in its
name, ignoring case (patterns are plain lower-case substrings, not regular expressions).
memcpy and memset operations are 'memory' whatever their name. Nothing matched -> 'other'.
To teach it a new kernel family, add a lower-case substring to the right row; order matters
where names overlap (read the notes above the table).

Categories (stable strings, used in the `kernels.category` column and in sql/):
  memory         memcpy / memset operations (copy engines, cudaMemset kernels)
  communication  NCCL collectives and point-to-point
  attention      fused attention: FlashAttention 2/3, PyTorch SDPA (flash, mem-efficient fmha), paged attention
  gemm           matrix multiply and convolution: cuBLAS/cuBLASLt (nvjet, sm90_xmma, ampere_sgemm, gemv,
                 split-K reduce), CUTLASS, cuDNN convolution (scudnn, implicit_gemm, winograd, dgrad/wgrad)
  moe            MoE routing and data movement by index: top-k, sort, histogram, gather, scatter,
                 index_select / index_put / index_add
  reduction      reductions and softmax: reduce_kernel, softmax, pooling, scans, loss reductions
  elementwise    elementwise ops and normalisation: vectorized/unrolled elementwise, copies, fills,
                 activations, layer/RMS/batch norm, concatenation, layout transposes
  other          anything else
"""
from __future__ import annotations

import re

# Ordered: first match wins; a category may own several rows. Names are matched whole, argument
# lists included, so order settles the overlaps seen in real names:
# - communication before reduction/moe: 'ncclKernel_AllReduce', 'AllGather' contain 'reduce'/'gather'.
# - attention before gemm: FlashAttention-3 kernels are 'cutlass::device_kernel<flash::...>'.
# - gemm before moe/reduction: cuDNN 'implicit_gemm_indexed' contains 'index', cuBLAS 'splitKreduce' and
#   cuDNN FFT convolutions ('cudnn::reduced_divisor' argument) contain 'reduce'.
# - moe before reduction: 'indexFuncLargeIndex<..., ReduceAdd>' and scatter-add contain 'reduce'.
# - normalisation and layout rows before reduction ('bn_fw_tr_1C11_singleread(..., reduced...)',
#   TensorRT 'genericReformat::...ReducedDivisors'); the general elementwise row comes last so that
#   'reduce_kernel<..., NormTwoOps>' (torch.norm) stays a reduction.
CATEGORY_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memory", ("memcpy", "memset")),
    ("communication", ("nccl", "allreduce", "all_reduce", "allgather", "all_gather",
                       "reducescatter", "reduce_scatter", "alltoall", "all_to_all")),
    ("attention", ("flash", "fmha", "attention", "attn", "pagedkv", "sdpa")),
    ("gemm", ("gemm", "gemv", "nvjet", "cutlass", "cublas", "matmul", "splitkreduce",
              "scudnn", "convolve", "convolution", "conv2d", "winograd", "dgrad", "wgrad", "fft2d", "cask_")),
    ("moe", ("moe", "expert", "topk", "sort", "histogram", "bincount", "gather", "scatter",
             "indexselect", "index_select", "index_elementwise", "indexfunc", "index_put", "index_add")),
    ("elementwise", ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "group_norm", "groupnorm",
                     "batch_norm", "batchnorm", "bn_fw", "bn_bw", "moments", "gammabeta",
                     "reformat", "nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("reduction", ("softmax", "reduce", "reduction", "pool", "devicescan", "cumsum", "argmax", "argmin",
                   "logsumexp", "nll", "cross_entropy", "triton_red", "triton_per")),
    ("elementwise", ("elementwise", "norm", "copy", "fill", "multi_tensor_apply", "dropout", "triton_poi",
                     "gelu", "silu", "relu", "rotary", "triu", "tril", "scalepacked", "im2col")),
)

OTHER = "other"
MEMORY = "memory"
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(c for c, _ in CATEGORY_PATTERNS)) + (OTHER,)
_MEMORY_KINDS = ("memcpy", "memset")

# One case-insensitive regular expression per row: 'a|b|c' over the escaped substrings. Python's re and
# DuckDB's RE2 read these plain alternations the same way.
_ROW_REGEX = tuple((category, "|".join(re.escape(p) for p in patterns)) for category, patterns in CATEGORY_PATTERNS)
_COMPILED = tuple((category, re.compile(regex, re.IGNORECASE)) for category, regex in _ROW_REGEX)


def categorize(name: str | None, kind: str = "kernel") -> str:
    """Category of one GPU operation; `kind` is the kernels view's kind (kernel|memcpy|memset)."""
    if kind in _MEMORY_KINDS:
        return MEMORY
    for category, regex in _COMPILED:
        if name and regex.search(name):
            return category
    return OTHER


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def category_case_sql(name_column: str = "name", kind_column: str | None = "kind") -> str:
    """A DuckDB CASE expression equal to `categorize(name_column, kind_column)`, built from the table.

    Vectorised (no Python per row), but it scans every name once per row of the table: on millions of
    kernels label the distinct names once (`create_category_table`) and join back.
    """
    whens = []
    if kind_column is not None:
        kinds = ", ".join(_sql_string(k) for k in _MEMORY_KINDS)
        whens.append(f"WHEN {kind_column} IN ({kinds}) THEN {_sql_string(MEMORY)}")
    for category, regex in _ROW_REGEX:
        whens.append(f"WHEN regexp_matches({name_column}, {_sql_string('(?i)' + regex)}) THEN {_sql_string(category)}")
    return "CASE " + " ".join(whens) + f" ELSE {_sql_string(OTHER)} END"


def category_table_sql(source: str, name_column: str = "name", kind_column: str = "kind") -> str:
    """SELECT name, kind, category over the distinct (name, kind) pairs of `source` (a table, view or subquery)."""
    case = category_case_sql(name_column, kind_column)
    return (f"SELECT {name_column} AS name, {kind_column} AS kind, {case} AS category "
            f"FROM (SELECT DISTINCT {name_column}, {kind_column} FROM {source})")


def create_category_table(con, source: str, table: str = "kernel_categories",
                          name_column: str = "name", kind_column: str = "kind") -> str:
    """Materialise (name, kind, category) for the distinct names of `source` as TEMP table `table`.

    Join it back ON name and kind (NULL names: category 'other'). Materialised on purpose: inlined
    in a join, DuckDB may push the CASE down to every row (1e6 kernels: 15 s inlined, 0.3 s this way).
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {category_table_sql(source, name_column, kind_column)}")
    return table
