"""Stand-in programs for the tools a CPU machine lacks (nsys, ncu): a Python script made executable."""
import stat
import sys
from pathlib import Path


def stand_in(directory: Path, name: str, script: str) -> Path:
    """Write `script` (`{python}` in its first line becomes this interpreter) as an executable DIRECTORY/NAME."""
    path = directory / name
    path.write_text(script.replace("{python}", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
