"""The README's front door stays true: its pasted output of the main command is what the command prints."""
from __future__ import annotations

import re
from pathlib import Path

from cli_helper import run_analyze as run

REPO = Path(__file__).resolve().parents[1]


def test_main_command_output_in_the_readme_is_real(capsys):
    readme = (REPO / "README.md").read_text()
    command = re.search(r"<!-- main-command -->\n```\n(.*?)\n```", readme, re.S).group(1)
    trace = command.split("dsocr-analyze ", 1)[1].strip()
    pasted = re.search(r"Real output of the main command:\n\n```\n(.*?)\n```", readme, re.S).group(1)
    code, out, err = run(capsys, REPO / trace, "--no-cache")
    assert code == 0, err
    printed = out.rstrip("\n").replace(str(REPO / trace), trace)
    assert printed == pasted
