import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared: real traces and fixtures beside the repository (not in a fresh clone). Every test reaches it
# through this name or the `shared` fixture, so DSOCR_SHARED=/nonexistent runs the suite as a fresh clone.
SHARED = Path(os.environ.get("DSOCR_SHARED") or REPO.parent / "shared")


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_folders(tmp_path_factory, monkeypatch):
    """Every test writes only in its own temporary folders: the analysis cache and temporary files
    (a decompressed export) go there, never to ~/.cache, /tmp or ../shared."""
    base = tmp_path_factory.mktemp("private")
    (base / "tmp").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg"))
    monkeypatch.setenv("TMPDIR", str(base / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(base / "tmp"))


@pytest.fixture(scope="session", autouse=True)
def shared_is_read_only():
    """No test writes in ../shared (the tool's outputs, cache and temporary files are all created with
    tempfile.mkstemp/mkdtemp beside their final place): a temporary file there is an error."""
    shared = os.path.realpath(SHARED)

    def guard(create):
        def guarded(*args, **kwargs):
            where = kwargs.get("dir") if "dir" in kwargs else (args[2] if len(args) > 2 else None)
            if where is not None and os.path.realpath(where).startswith(shared + os.sep) or \
                    where is not None and os.path.realpath(where) == shared:
                raise PermissionError(f"a test tried to write in {where}: ../shared is read-only for tests")
            return create(*args, **kwargs)
        return guarded

    with pytest.MonkeyPatch.context() as m:
        m.setattr(tempfile, "mkstemp", guard(tempfile.mkstemp))
        m.setattr(tempfile, "mkdtemp", guard(tempfile.mkdtemp))
        yield


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    return SHARED
