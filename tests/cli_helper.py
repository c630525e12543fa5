"""Run `dsocr-analyze` in-process as a user would, for the CLI tests."""
from dsocr_perf.analyze.cli import main


def run_analyze(capsys, *args) -> tuple[int, str, str]:
    """dsocr-analyze ARGS: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
