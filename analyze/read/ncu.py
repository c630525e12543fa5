"""Nsight Compute CSV (`ncu --import R.ncu-rep --csv --page raw --print-units base`) -> the `ncu` table (Arrow).

One row per profiled range (application-range replay: `Kernel Name` is `range`) or kernel (kernel replay):

    id, mode ('app-range' | 'kernel'), stage, request, step, kernel_name, kernel_class, gpu_time_ns, tensor_flops,
    simt_flops, dram_read_bytes, dram_write_bytes, l2_bytes

The file: a header row, a units row (first cell empty: 'byte', 'ns', '' for counts), then one row per range or
kernel, numbers with thousands separators ("1,225,591,296"); plain or gzipped (the content decides). Metrics are
the `.sum` columns; units are read from the units row and converted to base units (an unknown unit is refused).
A metric the run did not collect is a null column (l2_bytes in the ranges run, simt_flops unless the run counted
FP32/FP16 instructions: SIMT FLOPs = 2 fma + add + mul).

stage, request and step come from the NVTX stack, the column `thread Domain:Push/Pop_Range:PL_Type:PL_Value:...`:
`"dsocr:request:Int64:0:..."  "dsocr:decode:none:none:..."  "dsocr:decode_step:Int64:127:..."`; stage = the
innermost profiled stage range (sam, clip, projector, llm_prefill, decode_step), request and step = the payloads
of the `request` and `decode_step` ranges. In application-range mode gpu_time_ns is the range's span under
profiling, not kernel time.

The sidecar NAME.ncu.json (launch/ncu_pass.py) says how the runs were made and carries the session's manifest;
`read_sidecar` finds and checks it. Bad input is one TraceError line.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.metrics.categories import categorize
from dsocr_perf.analyze.paths import check_input, derived
from dsocr_perf.analyze.read.manifest import parse as parse_manifest
from dsocr_perf.dsocr import stages as S

APP_RANGE, KERNEL = "app-range", "kernel"
STAGES = (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL, S.DECODE_STEP)
SIDECAR_SCHEMA = "dsocr-ncu/1"
# CSV names beside a trace or sidecar, by stem: the ranges run, the kernel-replay runs (launch/ncu_pass.py)
CSV_SUFFIXES = (".ncu.csv", ".ncu-kernels.csv", ".ncu-simt.csv")
HINT = "give the CSV of `ncu --import R.ncu-rep --csv --page raw --print-units base` (what `make ncu` writes)"

NVTX_COLUMN = "Push/Pop_Range"          # part of the column's name: `thread Domain:Push/Pop_Range:PL_Type:...`
REQUIRED = ("ID", "Kernel Name")

# our column -> ncu metric (the `.sum` over the range or kernel) and the kind of unit it has
METRICS = {
    "gpu_time_ns": ("gpu__time_duration.sum", "time"),
    "tensor_flops": ("sm__ops_path_tensor_src_bf16_dst_fp32.sum", "count"),
    "dram_read_bytes": ("dram__bytes_read.sum", "bytes"),
    "dram_write_bytes": ("dram__bytes_write.sum", "bytes"),
    "l2_bytes": ("lts__t_bytes.sum", "bytes"),
}
SIMT_OPS = {"ffma": 2, "hfma": 2, "fadd": 1, "fmul": 1, "hadd": 1, "hmul": 1}    # FLOPs per instruction
SIMT_METRICS = {op: f"smsp__sass_thread_inst_executed_op_{op}_pred_on.sum" for op in SIMT_OPS}
COLUMNS = ("id", "mode", "stage", "request", "step", "kernel_name", "kernel_class", "gpu_time_ns", "tensor_flops",
           "simt_flops", "dram_read_bytes", "dram_write_bytes", "l2_bytes")
SCHEMA = pa.schema([("id", pa.int64()), ("mode", pa.string()), ("stage", pa.string()), ("request", pa.int64()),
                    ("step", pa.int64()), ("kernel_name", pa.string()), ("kernel_class", pa.string())]
                   + [(c, pa.int64()) for c in COLUMNS[7:]])

# unit (as ncu prints it) -> factor to the base unit (ns, byte, 1), per kind
_PREFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
UNITS = {
    "time": {"ns": 1, "nsecond": 1, "us": 10**3, "usecond": 10**3, "ms": 10**6, "msecond": 10**6, "s": 10**9,
             "second": 10**9},
    "bytes": {p + "byte": f for p, f in _PREFIX.items()} | {p + "B": f for p, f in _PREFIX.items() if p}
    | {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30},
    "count": {p: f for p, f in _PREFIX.items()} | {p + "inst": f for p, f in _PREFIX.items()},
}
MISSING = ("", "n/a", "N/A")
_NVTX_ENTRY = re.compile(r'"([^":]*):([^":]*):([^":]*):([^":]*):')
_NUMBER = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?([eE][+-]?\d+)?")


@dataclass
class NcuCsv:
    path: Path
    mode: str                      # APP_RANGE | KERNEL
    table: pa.Table                # the `ncu` table (COLUMNS)
    metrics: set                   # our columns the CSV has (l2_bytes, simt_flops, ...)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.table.num_rows


@dataclass
class Sidecar:
    path: Path
    manifest: dict | None          # the session's manifest (checked), None when unusable
    total_steps: int | None        # decode steps of the page
    sampled_steps: list[int] | None  # decode steps the kernel-replay runs profiled
    gpu: str | None
    version: str | None            # ncu's
    rows: dict                     # CSV file name -> rows the run wrote
    warnings: list[str] = field(default_factory=list)


def read_ncu_csv(path) -> NcuCsv:
    """Read one ncu CSV (plain or gzipped) into the `ncu` table; TraceError with one line when it is not one."""
    path = check_input(Path(path), "ncu CSV")
    if path.is_dir():
        raise TraceError(f"{path} is a folder; {HINT}")
    rows = _csv_rows(path)
    if not rows:
        raise TraceError(f"{path} is empty; {HINT}")
    header = rows[0]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise TraceError(f"{path}: no {', '.join(repr(c) for c in missing)} column, so not an ncu raw-page CSV; {HINT}")
    nvtx = [i for i, h in enumerate(header) if NVTX_COLUMN in h]
    if not nvtx:
        raise TraceError(f"{path}: no NVTX stack column (`thread Domain:Push/Pop_Range:...`): run ncu with --nvtx (as "
                         "`make ncu` does) so each row says its stage")
    col = {h: i for i, h in enumerate(header)}
    if len(rows) < 2 or rows[1][col["ID"]].strip():
        raise TraceError(f"{path}: no units row under the header; {HINT}")
    units = rows[1]
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TraceError(f"{path}: line {n} has {len(row)} of the header's {len(header)} cells: the file is "
                             "truncated or damaged; export it again")
    factors, metrics = _factors(path, header, units)
    if not metrics & {"tensor_flops", "dram_read_bytes", "dram_write_bytes", "l2_bytes", "simt_flops"}:
        wanted = ", ".join(m for m, _ in METRICS.values())
        raise TraceError(f"{path}: none of the metrics dsocr-perf reads ({wanted}, or the SIMT instruction counts); "
                         "run `make ncu`, or pass ncu --metrics naming them")
    data = rows[2:]
    if not data:
        raise TraceError(f"{path}: a header and no rows: ncu profiled nothing (the NVTX filter matched no range); "
                         "check `--nvtx-include dsocr@NAME/` (the trailing / matters)")
    kernel_names = [r[col["Kernel Name"]] for r in data]
    mode = APP_RANGE if all(k == "range" for k in kernel_names) else KERNEL
    if mode == KERNEL and "range" in kernel_names:
        raise TraceError(f"{path} mixes range rows and kernel rows; give the CSV of one ncu run")
    out = {c: [] for c in COLUMNS}
    gaps: dict[str, int] = {}
    classes: dict[str, str] = {}          # a kernel name's class, matched once per distinct name
    for n, row in enumerate(data, start=3):
        stage, request, step = nvtx_place(row[nvtx[0]])
        out["id"].append(_id(path, n, row[col["ID"]]))
        out["mode"].append(mode)
        out["stage"].append(stage)
        out["request"].append(request)
        out["step"].append(step if stage == S.DECODE_STEP else None)
        name = row[col["Kernel Name"]] if mode == KERNEL else None
        out["kernel_name"].append(name)
        if name is not None and name not in classes:
            classes[name] = categorize(name)
        out["kernel_class"].append(classes.get(name))
        values = {key: _value(path, n, header[i], row[i], factor) for key, (i, factor) in factors.items()}
        for key, value in values.items():
            if value is None:
                gaps[key] = gaps.get(key, 0) + 1
        for key in METRICS:
            out[key].append(values.get(key))
        out["simt_flops"].append(_simt(values) if "simt_flops" in metrics else None)
    warnings = [f"{path.name}: {k:,} rows without a value for {_metric_name(m)} (n/a): left out of its sums"
                for m, k in gaps.items()]
    table = pa.table({c: pa.array(out[c], SCHEMA.field(c).type) for c in COLUMNS})
    return NcuCsv(path, mode, table, metrics, warnings)


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        raw = gzip.open(path, "rb") if gzipped else path.open("rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            # ncu's own `==PROF==` / `==WARNING==` lines may precede the table when stdout was captured whole
            return [r for r in csv.reader((line for line in text if not line.startswith("==")), strict=True)]
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text, so not an ncu CSV; {HINT}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise TraceError(f"{path}: cannot read the gzip file ({e}); it is truncated or damaged: copy it again") from None
    except csv.Error as e:
        raise TraceError(f"{path}: not a well-formed CSV ({e}); the file is truncated or damaged: export it "
                         "again") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read it ({e.strerror or e})") from None


def _factors(path: Path, header: list[str], units: list[str]) -> tuple[dict, set]:
    """our key -> (column index, factor to base units) for the metrics present; the set of our columns present."""
    col = {h: i for i, h in enumerate(header)}
    wanted = {key: (metric, kind) for key, (metric, kind) in METRICS.items()}
    wanted |= {f"simt_{op}": (metric, "count") for op, metric in SIMT_METRICS.items()}
    out = {}
    for key, (metric, kind) in wanted.items():
        if metric not in col:
            continue
        unit = units[col[metric]].strip()
        if unit not in UNITS[kind]:
            raise TraceError(f"{path}: column {metric} is in unit {unit!r}, which dsocr-perf does not know for a "
                             f"{kind}; export with --print-units base")
        out[key] = (col[metric], UNITS[kind][unit])
    metrics = {k for k in out if k in METRICS}
    if all(f"simt_{op}" in out for op in SIMT_OPS):
        metrics.add("simt_flops")
    return out, metrics


def _value(path: Path, line: int, column: str, text: str, factor: int) -> int | None:
    text = text.strip()
    if text in MISSING:
        return None
    if not _NUMBER.fullmatch(text):
        raise TraceError(f"{path}: line {line}, column {column}: {text[:40]!r} is not a number; the file is damaged: "
                         "export it again")
    plain = text.replace(",", "")
    if factor == 1 and plain.lstrip("+-").isdigit():
        return int(plain)
    return round(float(plain) * factor)


def _id(path: Path, line: int, text: str) -> int:
    if not text.strip().isdigit():
        raise TraceError(f"{path}: line {line}: ID {text[:40]!r} is not a row number; the file is damaged: export "
                         "it again")
    return int(text)


def _simt(values: dict) -> int | None:
    counts = [values.get(f"simt_{op}") for op in SIMT_OPS]
    if any(c is None for c in counts):
        return None
    return sum(per * c for per, c in zip(SIMT_OPS.values(), counts))


def _metric_name(key: str) -> str:
    return METRICS[key][0] if key in METRICS else SIMT_METRICS[key.removeprefix("simt_")]


def nvtx_place(stack: str) -> tuple[str | None, int | None, int | None]:
    """(stage, request, decode step payload) from a row's NVTX stack; None where the stack does not say."""
    stage = request = step = None
    for domain, name, _payload_type, payload in _NVTX_ENTRY.findall(stack):
        if domain != S.DOMAIN:
            continue
        value = int(payload) if re.fullmatch(r"-?\d+", payload) else None
        if name == S.REQUEST:
            request = value
        elif name in STAGES:
            stage = name
            step = value if name == S.DECODE_STEP else step
    return stage, request, step


# ------------------------------------------------------------------------------------------ beside the trace

def ncu_stem(path: Path) -> str:
    """'run.ncu-kernels.csv.gz' -> 'run' (the name the sidecar NAME.ncu.json has)."""
    name = Path(path).name
    for suffix in CSV_SUFFIXES + (".csv",):
        for ext in (".gz", ""):
            if name.endswith(suffix + ext) and len(name) > len(suffix + ext):
                return name[: -len(suffix + ext)]
    return name


def beside(trace_path: Path) -> list[Path]:
    """NAME.ncu.csv, NAME.ncu-kernels.csv, NAME.ncu-simt.csv (each plain or .gz) beside a trace."""
    found = []
    if not Path(trace_path).name:
        return found
    for suffix in CSV_SUFFIXES:
        for ext in ("", ".gz"):
            candidate = derived(trace_path, suffix + ext)
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def read_sidecar(csv_path: Path) -> Sidecar | None:
    """NAME.ncu.json beside the CSV (None when there is none); a sidecar that cannot be used gives warnings."""
    path = Path(csv_path).with_name(ncu_stem(csv_path) + ".ncu.json")
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return Sidecar(path, None, None, None, None, None, {}, [f"{path} is not readable JSON ({type(e).__name__}): "
                                                               "measured numbers only, no analytic ones"])
    if not isinstance(value, dict) or value.get("schema") != SIDECAR_SCHEMA:
        return Sidecar(path, None, None, None, None, None, {},
                       [f"{path} is not a {SIDECAR_SCHEMA} sidecar: measured numbers only, no analytic ones"])
    warnings = []
    manifest, problem = parse_manifest(json.dumps(value.get("manifest")))
    if manifest is None:
        warnings.append(f"{path}: its manifest is not usable ({problem or 'none'}): measured numbers only")
    steps = value.get("decode_steps") if isinstance(value.get("decode_steps"), dict) else {}
    total = steps.get("total") if _count(steps.get("total")) else None
    sampled = steps.get("sampled_by_kernel_runs")
    sampled = sampled if isinstance(sampled, list) and all(_count(s) for s in sampled) else None
    rows = {r["csv"]: r["rows"] for r in value.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("csv"), str)
            and _count(r.get("rows"))}
    ncu = value.get("ncu") if isinstance(value.get("ncu"), dict) else {}
    return Sidecar(path, manifest, total, sampled, _text(value.get("gpu")), _text(ncu.get("version")), rows, warnings)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def check_rows(csv: NcuCsv, sidecar: Sidecar | None) -> None:
    """A CSV cut at a row boundary reads well: the sidecar's row count tells."""
    if sidecar is None:
        return
    name = csv.path.name.removesuffix(".gz")
    expected = sidecar.rows.get(name)
    if expected is not None and csv.rows < expected:
        raise TraceError(f"{csv.path}: {csv.rows:,} rows, but {sidecar.path.name} says the run wrote {expected:,}: "
                         "the file is truncated; copy it again")
