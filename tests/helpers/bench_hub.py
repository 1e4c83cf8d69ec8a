"""The Hugging Face Hub as the benchmark downloads meet it, replayed from the recorded listings (tools/hub_listings):
which files a revision holds, which of them the download globs select (huggingface_hub's own matcher), and those
files written locally with the fixtures' rows (mini_data/bench) so that the task configs can read them.

``fake_hf_cli`` writes an executable that stands in for ``hf download``: it refuses a revision other than the
recorded one (as the Hub answers an unknown revision), and a repository named in ``$FAKE_HF_FAIL`` fails outright.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from tests.helpers import MINI_DATA, ROOT
from tools.bench_data import BENCH_SOURCES, expand_layout, hub_listing, listed_files

FIXTURES = MINI_DATA / "bench"
# A CMMLU row whose options a type-guessing CSV reader would change ("2" -> 2.0, "NA" and "None" -> null).
CMMLU_CSV = ",Question,A,B,C,D,Answer\n0,学习率为多少？,2,0.5,NA,None,A\n"


def hub_select(folder: str, include: list[str], exclude: list[str]) -> list[str]:
    """The recorded files of ``folder``'s revision that ``hf download --include ... --exclude ...`` fetches."""
    listed = listed_files(hub_listing(folder))
    return sorted(filter_repo_objects(listed, allow_patterns=include or None, ignore_patterns=exclude or None))


def selected_files(folder: str) -> list[str]:
    """What the download of ``folder`` (its ``BENCH_SOURCES`` globs) fetches from the recorded listing."""
    return hub_select(folder, list(BENCH_SOURCES[folder].include), list(BENCH_SOURCES[folder].exclude))


def write_served_files(folder: str, paths: list[str], local_dir: Path) -> None:
    """Each path under ``local_dir``: a parquet file as a copy of a fixture of the same split (same file name) of
    that benchmark, the CMMLU release zip as the recorded archive layout of small CSVs, anything else a short text."""
    for path in paths:
        target = local_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".parquet"):
            same_split = sorted((FIXTURES / folder).rglob(Path(path).name))
            if not same_split:
                raise FileNotFoundError(f"no fixture named {Path(path).name} under {FIXTURES / folder} for {path}")
            target.write_bytes(same_split[0].read_bytes())
        elif path.endswith(".zip"):
            with zipfile.ZipFile(target, "w") as bundle:
                for member in expand_layout(hub_listing(folder)["archive_files"]):
                    bundle.writestr(member, CMMLU_CSV)
        else:
            target.write_text(f"{path} of {folder}\n", encoding="utf-8")


def fake_hf_cli(tmp_path: Path) -> tuple[Path, Path]:
    """An ``hf`` stand-in that serves the recorded listings; returns the executable and the file of its calls."""
    calls, cli = tmp_path / "hf_calls.jsonl", tmp_path / "hf"
    folders = {source.repo: folder for folder, source in BENCH_SOURCES.items()}
    cli.write_text(f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from tests.helpers.bench_hub import hub_select, write_served_files
from tools.bench_data import hub_listing
args = sys.argv[1:]
with open({str(calls)!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
def values(flag):
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]
repo = args[1]
folder = {folders!r}[repo]
if repo in os.environ.get("FAKE_HF_FAIL", "").split(","):
    sys.exit(f"fake hf: {{repo}} is unreachable")
revision = (values("--revision") or ["main"])[0]
if revision != hub_listing(folder)["revision"]:
    sys.exit(f"fake hf: Revision Not Found for {{repo}}@{{revision}} (only the recorded revision is served)")
served = hub_select(folder, values("--include"), values("--exclude"))
write_served_files(folder, served, Path(values("--local-dir")[0]))
""")
    cli.chmod(0o755)
    return cli, calls
