"""The shape of the code base, checked on the import graph: ``utils/`` is the library (no programs, nothing from
``tools/``, no stage script), ``tools/`` are leaves, benchmarks measure the library, and shell scripts call programs,
never test files or library modules."""

from __future__ import annotations

import ast
import re

import pytest

from tests.helpers import ROOT

STAGE_SCRIPTS = {path.stem for path in ROOT.glob("mini_qwen_*.py")}
PROJECT_MODULES = {"utils", "tools", "benchmarks", "demo", "experiments", *STAGE_SCRIPTS}
# The one benchmark that must read the stages' own argument classes: it probes what each recipe settles into.
STAGE_READERS = {"benchmarks/engine_probe.py"}


def python_files(*folders: str):
    for folder in folders:
        path = ROOT / folder
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imports(path):
    """(module, name) for every ``from module import name`` and (module, None) for ``import module``, at any depth
    (imports inside functions count: they are the same dependency, only later)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)


def rel(path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", sorted((ROOT / "utils").rglob("*.py")), ids=lambda p: rel(p))
def test_library_modules_stay_small(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 250


def test_the_library_has_no_programs():
    """Command lines live in tools/ (or the stage scripts): no module in utils/ has a __main__ block."""
    mains = [
        rel(path)
        for path in python_files("utils")
        if re.search(r"^if __name__ == .__main__.:", path.read_text(encoding="utf-8"), re.M)
    ]
    assert mains == []


def test_the_library_imports_no_program_and_no_stage_script():
    found = [
        (rel(path), module)
        for path in python_files("utils")
        for module, _ in imports(path)
        if module.split(".")[0] in {"tools", "demo", "experiments", "benchmarks", *STAGE_SCRIPTS}
    ]
    assert found == []


def test_tools_are_leaves():
    """Only tools import tools (and the tests); the stages, demos, experiments and benchmarks never do."""
    users = python_files("utils", "demo", "experiments", "benchmarks", *(f"{s}.py" for s in STAGE_SCRIPTS))
    found = [(rel(path), module) for path in users for module, _ in imports(path) if module.split(".")[0] == "tools"]
    assert found == []


def test_the_tokenizer_is_the_ground_floor():
    """utils/tokenizer.py builds and loads tokenizers; reading data to train one is the tokenizer tool's job."""
    modules = {module for module, _ in imports(ROOT / "utils" / "tokenizer.py")}
    assert {m for m in modules if m.startswith(("utils.data", "pyarrow", "tools"))} == set()


def test_benchmarks_measure_the_library_not_the_stages():
    found = [
        (rel(path), module)
        for path in python_files("benchmarks")
        if rel(path) not in STAGE_READERS
        for module, _ in imports(path)
        if module.split(".")[0] in STAGE_SCRIPTS
    ]
    assert found == []


def test_no_private_name_is_imported_from_another_module():
    code = python_files("utils", "tools", "benchmarks", "demo", "experiments", *(f"{s}.py" for s in STAGE_SCRIPTS))
    private = [
        (rel(path), module, name)
        for path in code
        for module, name in imports(path)
        if name and name.startswith("_") and module.split(".")[0] in PROJECT_MODULES
    ]
    assert private == []


def shell_invocations(text: str):
    """What a shell script runs with Python: ``-m module`` and ``path.py`` arguments."""
    yield from ((m, "module") for m in re.findall(r"-m\s+([A-Za-z_][\w.]*)", text))
    yield from ((p, "file") for p in re.findall(r"([\w./-]+\.py)\b", text))


def test_shell_scripts_run_programs_never_tests_or_library_modules():
    """An import through a shell script is still an import: the GPU check once ran a file under tests/."""
    scripts = [ROOT / "run.sh", ROOT / "prepare.sh", ROOT / ".ci" / "run", *sorted(ROOT.glob("benchmarks/*.sh"))]
    bad = []
    for script in scripts:
        for target, kind in shell_invocations(script.read_text(encoding="utf-8")):
            name = target.replace("/", ".").removesuffix(".py") if kind == "file" else target
            if name.split(".")[0] in {"tests", "utils"}:
                bad.append(f"{rel(script)}: {target}")
    assert bad == []


def test_every_module_logs_under_its_own_name():
    """One convention: ``logging.getLogger(__name__)``. The GGUF converter's records are parsed by name across a
    process boundary (tools/export.py), the one named logger."""
    named = [
        rel(path)
        for path in python_files(
            "utils", "tools", "benchmarks", "demo", "experiments", *(f"{s}.py" for s in STAGE_SCRIPTS)
        )
        if re.search(r"^logger = logging\.getLogger\((?!__name__\))", path.read_text(encoding="utf-8"), re.M)
    ]
    assert named == ["tools/gguf_converter.py"]


def test_tests_mirror_the_layout():
    """tests/utils/... and tests/tools/ hold the tests of those folders; every test file is in a package folder."""
    for folder in ("utils", "utils/data", "utils/train", "tools", "stages", "benchmarks", "helpers"):
        assert (ROOT / "tests" / folder / "__init__.py").is_file()
    loose = [rel(p) for p in (ROOT / "tests").rglob("test_*.py") if not (p.parent / "__init__.py").is_file()]
    assert loose == []
