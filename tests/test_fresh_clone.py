"""A fresh clone runs the suite: ../shared (real traces beside the repository) may be absent, and no test
writes in it. Checked on the test sources themselves (fast, no second run of the suite):

- only conftest.py says where ../shared is (conftest.SHARED; DSOCR_SHARED=/nonexistent runs the suite as a
  fresh clone would: every test that needs it skips with a reason);
- a function that reads a path under SHARED takes the `shared` fixture (which skips without it), or
  skips or checks the folder itself; module-level code only builds paths, or checks the folder first;
- no test calls a writing method on a path under ../shared. (The tool's own writes are guarded at run
  time: conftest refuses temporary files there, and every output, cache and decompressed export is
  created through one.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(p for p in TESTS.rglob("*.py") if p.name != "conftest.py")
WRITERS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "rename", "replace", "chmod",
           "symlink_to", "hardlink_to", "rmtree", "copy", "copy2", "copyfile", "copytree", "move"}
FIXTURE_NAMES = {"shared", "shared_dir"}
GUARDS = ("is_dir()", "exists()", "pytest.skip", "skipif")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _names(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _shared_names(tree: ast.Module) -> set[str]:
    """SHARED as imported from conftest, and module-level names built from it."""
    names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "conftest"
             for a in n.names if a.name == "SHARED"}
    changed = True
    while changed:
        changed = False
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and _names(node.value or ast.Constant(None)) & names:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                new = {t.id for t in targets if isinstance(t, ast.Name)} - names
                if new:
                    names |= new
                    changed = True
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_only_conftest_locates_shared(path):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and \
                        (side.value == "shared" or side.value.startswith(("shared/", "../shared"))):
                    pytest.fail(f"{path.name}:{node.lineno} builds the path to ../shared itself: use conftest.SHARED "
                                "or the `shared` fixture")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_shared_is_read_only_where_it_is_checked(path):
    source = path.read_text(encoding="utf-8")
    tree = _tree(path)
    shared = _shared_names(tree) | FIXTURE_NAMES
    derived = _shared_names(tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        reads = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                 and _names(c.func.value) & derived]
        if reads and not any(g in ast.get_source_segment(source, node) for g in GUARDS):
            pytest.fail(f"{path.name}:{node.lineno} reads ../shared at import time without checking it is there")
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        uses = set().union(*(_names(stmt) for stmt in fn.body)) & derived   # decorators run at import: above
        params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        text = ast.get_source_segment(source, fn)
        decorators = " ".join(ast.get_source_segment(source, d) for d in fn.decorator_list)
        if uses and not params & FIXTURE_NAMES and not any(g in text + decorators for g in GUARDS):
            pytest.fail(f"{path.name}:{fn.lineno} {fn.name} uses {sorted(uses)} without the `shared` fixture or a "
                        "check that ../shared is there (a fresh clone would fail instead of skip)")
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in WRITERS:
            targets = [func.value] if func.attr not in {"copy", "copy2", "copyfile", "copytree", "move"} else \
                call.args[1:2]
            if any(_names(t) & shared for t in targets):
                pytest.fail(f"{path.name}:{call.lineno} writes under ../shared ({func.attr})")
        if isinstance(func, ast.Name) and func.id == "open" and call.args and _names(call.args[0]) & shared:
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                pytest.fail(f"{path.name}:{call.lineno} opens a file under ../shared for writing")


def test_the_checks_see_the_suite():
    """The scan is not vacuous: it finds the modules that use ../shared and their fixture."""
    users = [p.name for p in SOURCES if _shared_names(_tree(p)) or "shared" in
             {a.arg for n in ast.walk(_tree(p)) if isinstance(n, ast.FunctionDef) for a in n.args.args}]
    assert {"test_analyze_cli.py", "test_analyze_reference.py", "test_kineto.py", "test_hostile.py"} <= set(users)
