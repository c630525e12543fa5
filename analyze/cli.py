"""`dsocr-analyze`: where the GPU time of a trace went, per range, and SQL over the same tables.

    dsocr-analyze TRACE                      the stage table (= dsocr-analyze stages TRACE)
    dsocr-analyze TRACE --ranges all --json  every range name, machine-readable
    dsocr-analyze kernels TRACE [--range NAME] [--top N]
    dsocr-analyze sql TRACE "SELECT ..."     or  -f sql/FILE.sql,  --csv / --json
    dsocr-analyze ncu FILE.csv [FILE2.csv]   Nsight Compute counters without a trace
    report | dataset | diff | export-perfetto | writeback | export-parquet

The CLI sits on top: command modules register their commands here (`register(cli, common)`, the way
llm and sqlite-utils plugins do); nothing imports this module. `main()` is the one boundary where
every failure becomes one `Error:` line and a documented exit status (analyze.errors).
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import click

from dsocr_perf.analyze import errors as E

# NumPy's OpenBLAS starts a thread per core at import (~65 ms of CPU here); the analysis never calls BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DEFAULT_COMMAND = "stages"
# command -> the module that registers it (imported when the command runs or --help lists it: the
# stage table does not pay for the report's or the diff's imports)
COMMAND_MODULES = {"stages": "stages", "kernels": "stages", "sql": "query", "report": "report", "dataset": "dataset",
                   "diff": "diff", "export-perfetto": "perfetto", "writeback": "writeback",
                   "export-parquet": "parquet", "ncu": "ncu"}


class AnalyzeGroup(click.Group):
    """A group whose first argument may be a trace instead of a command (then: the stage table), and
    whose commands are registered by their modules on first use (click's lazy-loading pattern)."""

    def parse_args(self, ctx, args):
        if not args:
            raise E.UsageError("no trace given: run `dsocr-analyze TRACE` (an nsys SQLite export or a PyTorch "
                               "profiler trace); see `dsocr-analyze --help` for the commands")
        if args[0] not in ("--help", "-h", "--version") and args[0] not in self.list_commands(ctx):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx, name):
        if name in COMMAND_MODULES and name not in self.commands:
            module = importlib.import_module(f"dsocr_perf.analyze.out.{COMMAND_MODULES[name]}")
            if name not in self.commands:
                module.register(self, common)
        return super().get_command(ctx, name)


class PositiveNumber(click.ParamType):
    """A finite number > 0 (FloatRange lets nan and inf through)."""
    name = "number"

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive finite number", param, ctx)
        return number


@click.group(cls=AnalyzeGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(None, "--version", package_name="dsocr-perf", prog_name="dsocr-analyze",
                      message="%(prog)s %(version)s")
def cli():
    """Per-stage GPU time of an Nsight Systems export (or PyTorch profiler trace), attributed to NVTX ranges
    the way `nsys stats` does, where the wall time goes, and SQL over the trace.

    \b
    dsocr-analyze TRACE                 the stage table (same as: dsocr-analyze stages TRACE)
    dsocr-analyze TRACE --ranges all    every range name;  --json for machine-readable output
    dsocr-analyze kernels TRACE [--range NAME] [--top N]
    dsocr-analyze sql TRACE "SELECT ..." | -f sql/FILE.sql  [--csv | --json]

    Exit status: 0 ok, 2 usage, 3 bad input, 4 cannot write an output, 130 interrupted.
    """


TO_CACHE: list = []      # traces whose tables are written to the cache once the command has answered
WARNINGS: list = []      # printed once the command has answered: a failing command prints its one Error line only


def open_for_command(path: Path, no_cache: bool, quiet: bool = False, keep: bool = True, accounting: bool = True):
    """Open a trace for a command; its warnings go to stderr unless the output is machine-readable.
    `keep`: write the cache after the answer (commands that read more than the stage table);
    `accounting`: the command reads the wall-time accounting (analyze.trace.open_trace)."""
    from dsocr_perf.analyze.trace import open_trace

    trace = open_trace(path, cache=not no_cache, accounting=accounting)
    if not quiet:
        print_warnings(trace)
    if keep and not no_cache:
        TO_CACHE.append(trace)
    return trace


def print_warnings(trace) -> None:
    WARNINGS.extend(w for w in trace.warnings if w not in WARNINGS)


def _flush_warnings() -> None:
    while WARNINGS:
        click.echo(f"Warning: {_one_line(WARNINGS.pop(0))}", err=True)


def echo_json(value) -> None:
    """JSON on stdout: indented for a terminal, one line otherwise (the C encoder: a 1e6-kernel trace's
    document with every decode step is written in milliseconds instead of a second). NaN never appears:
    documents are cleaned first, and allow_nan=False makes sure."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(value, indent=indent, allow_nan=False, default=str))


# What every command shares: its options and how a trace is opened.
common = SimpleNamespace(
    Path=Path,
    trace_argument=click.argument("trace_path", metavar="TRACE", type=click.Path(path_type=Path)),
    no_cache_option=click.option("--no-cache", is_flag=True,
                                 help="Neither read nor write the analysis cache (in ~/.cache/dsocr-perf)."),
    force_option=click.option("--force", is_flag=True, help="Overwrite existing outputs."),
    open=open_for_command,
    warn=print_warnings,
    echo=click.echo,
    echo_json=echo_json,
    positive_number=PositiveNumber(),
)



def main(argv=None) -> None:
    """Entry point: errors become one `Error: ...` line and a documented exit status."""
    if threading_main():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
    INTERRUPTED.clear()
    TO_CACHE.clear()
    WARNINGS.clear()
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        # not cli.main(): it turns a closed stdout into exit 1 and prints a blank line on Ctrl-C
        with cli.make_context("dsocr-analyze", args) as ctx:
            cli.invoke(ctx)
        sys.stdout.flush()
        _flush_warnings()
        _store_caches()
        if argv is None:            # the console command (not a caller in this process): leave at once
            _exit_now()
    except click.exceptions.Exit as e:
        sys.stdout.flush()
        sys.exit(e.exit_code)
    except E.AnalyzeError as e:
        _fail(str(e), e.status)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted; nothing was written, run the command again to finish", E.EXIT_INTERRUPTED)
    except click.exceptions.NoSuchOption as e:
        hint = "see `dsocr-analyze --help`"
        if any(ch.isspace() for ch in e.option_name):   # a query that starts with a -- comment
            hint = "a query that starts with `--` needs `--` before it: dsocr-analyze sql TRACE -- \"-- ...\""
        _fail(f"{_sentence(e.format_message())}; {hint}", E.EXIT_USAGE)
    except click.ClickException as e:
        hint = f"; see `{e.ctx.command_path if getattr(e, 'ctx', None) is not None else 'dsocr-analyze'} --help`"
        _fail(f"{_sentence(e.format_message())}{hint}", E.EXIT_USAGE)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except Exception as e:
        if INTERRUPTED:   # a library turned the signal into its own error (DuckDB: "Query interrupted")
            _fail("interrupted; nothing was written, run the command again to finish", E.EXIT_INTERRUPTED)
        if isinstance(e, MemoryError):
            _fail("out of memory while analysing the trace; close other programs or analyse it on a machine with "
                  "more memory", E.EXIT_INPUT)
        if isinstance(e, OSError):
            _fail(f"cannot write the output ({e.strerror or e}); check free space and where the output goes",
                  E.EXIT_OUTPUT)
        if os.environ.get("DSOCR_DEBUG"):  # a bug: one line, the traceback only when asked for
            raise
        _fail(f"internal error ({type(e).__name__}: {' '.join(str(e).split())[:300]}); rerun with DSOCR_DEBUG=1 "
              "for the traceback and report it", 70)


def _exit_now() -> None:
    """The answer is out: exit without tearing the trace's arrays down one by one (~1 s for 10^7
    kernels); the exit handlers (temporary files) still run."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


def _store_caches() -> None:
    from dsocr_perf.analyze import cache

    while TO_CACHE:
        cache.store_after_answer(TO_CACHE.pop())


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


INTERRUPTED: list = []


def _interrupt(signum, frame):
    INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name) escaped: a message stays one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for ch in str(text))


def _sentence(text: str) -> str:
    return text.rstrip().rstrip(".")


def _fail(message: str, status: int) -> None:
    from dsocr_perf.analyze.paths import discard_temporaries

    discard_temporaries()
    _quiet_stdout_if_broken()
    try:
        click.echo(f"Error: {_one_line(message)}", err=True)
    except (OSError, ValueError):
        pass
    sys.exit(status)


def _quiet_stdout_if_broken() -> None:
    """Output buffered for a stdout that cannot take it (a full disk) must not fail again at exit."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _quiet_stdout()


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    main()
