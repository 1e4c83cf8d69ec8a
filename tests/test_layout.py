"""The shape of the code base: rooms with one job, public names only across modules, benchmarks built on
utils/ (never on a stage script), and user-facing text that describes the project, not how it is made."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import ROOT

PROJECT_MODULES = ("utils", "benchmarks", "demo", "experiments", "mini_qwen_pt", "mini_qwen_sft", "mini_qwen_dpo",
                   "mini_qwen_eval")  # fmt: skip


def python_files(*folders: str):
    for folder in folders:
        path = ROOT / folder
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imports(path):
    """(module, name) for every ``from module import name`` and (module, None) for ``import module``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)


@pytest.mark.parametrize("path", sorted((ROOT / "utils").glob("*.py")), ids=lambda p: p.name)
def test_utils_modules_stay_small(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 250


def test_no_private_name_is_imported_from_another_module():
    code = python_files("utils", "benchmarks", "demo", "experiments",
                        *(f"{m}.py" for m in PROJECT_MODULES if m.startswith("mini")))  # fmt: skip
    private = [(path.relative_to(ROOT).as_posix(), module, name) for path in code for module, name in imports(path)
               if name and name.startswith("_") and module.split(".")[0] in PROJECT_MODULES]  # fmt: skip
    assert private == []


def test_benchmarks_and_utils_import_no_stage_script():
    stage_scripts = {"mini_qwen_pt", "mini_qwen_sft", "mini_qwen_dpo", "mini_qwen_eval"}
    found = [(path.relative_to(ROOT).as_posix(), module) for path in python_files("benchmarks", "utils")
             for module, _ in imports(path) if module.split(".")[0] in stage_scripts]  # fmt: skip
    assert found == []


# Words about how the project is developed (sessions, issue numbers, the development machines and their tools),
# which mean nothing to a user.
DEVELOPMENT_TALK = re.compile(
    r"development session|\bsessions? (?:so far|was lent)|issue ?#\d|\.\./shared|real_samples|\blent\b|"
    r"device tool|not drawn|\bcarry\b",
    re.IGNORECASE,
)


def user_facing_files():
    for pattern in ("README*.md", "docs/**/*.md", "benchmarks/*", "configs/**/*.yaml", "mini_data/README.md", "*.sh"):
        yield from sorted(p for p in ROOT.glob(pattern) if p.is_file())


def test_user_facing_text_says_nothing_about_how_the_project_is_developed():
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in user_facing_files()
            for m in DEVELOPMENT_TALK.finditer(p.read_text(encoding="utf-8", errors="replace"))]  # fmt: skip
    assert hits == []


def test_both_readmes_have_the_same_structure_and_commands():
    """README.md (Chinese) and README_en.md (English): the same sections in the same order, the same commands."""
    zh, en = ((ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "README_en.md"))
    levels = [[len(h) for h in re.findall(r"^(#+) ", text, re.M)] for text in (zh, en)]
    assert levels[0] == levels[1] and len(levels[0]) >= 8
    commands = [re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S) for text in (zh, en)]
    strip = [[re.sub(r"\s+#.*", "", block) for block in blocks] for blocks in commands]  # comments are translated
    assert strip[0] == strip[1] and commands[0]
