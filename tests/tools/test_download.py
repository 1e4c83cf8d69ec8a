"""tools.download --stage bench against the recorded Hub listings (tools/hub_listings): every benchmark is fetched at
its exact revision with flags the installed ``hf`` knows, the recorded file names pass through the download globs
(huggingface_hub's own matcher) into exactly the files the task configs read, one benchmark failing does not stop
the others, and the run ends with what arrived and what did not."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT
from tests.helpers.bench_hub import FIXTURES, fake_hf_cli, selected_files, write_served_files
from tools.bench_data import BENCH_SOURCES, hub_listing, listed_files, normalize_bench_folder

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -r requirements/bench.txt")

from tools.bench_tasks import SPECS, builtin_tasks_dir, full_docs, read_task_yaml, write_task_yamls  # noqa: E402

FOLDERS = list(BENCH_SOURCES)


def tasks_of(folder: str) -> list[str]:
    return [bench for bench, spec in SPECS.items() if spec["folder"] == folder]


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_source_names_the_revision_its_listing_records(folder):
    source, listing = BENCH_SOURCES[folder], hub_listing(folder)
    assert (listing["repo"], listing["revision"]) == (source.repo, source.revision)
    assert re.fullmatch(r"[0-9a-f]{40}", source.revision) or (
        re.fullmatch(r"[0-9a-f]{7,39}", source.revision) and "resolves commit prefixes" in json.dumps(listing)
    ), "a revision is a full commit id, or a prefix whose listing says how it resolves"
    assert listing["records"] and all({"kind", "source", "says"} <= set(record) for record in listing["records"])


@pytest.mark.parametrize("folder", FOLDERS)
def test_recorded_listing_passes_the_globs_into_the_task_configs(tmp_path, folder):
    """The files the globs select at the recorded revision are exactly the files the task configs read (after the
    CMMLU zip is converted), and every subject lm_eval knows is among them."""
    served = selected_files(folder)
    assert served, f"{folder}: the download globs select none of {len(listed_files(hub_listing(folder)))} files"
    local = tmp_path / "bench" / folder
    write_served_files(folder, served, local)
    normalize_bench_folder(local)
    tasks = write_task_yamls(tmp_path / "bench", tmp_path / "tasks", tasks_of(folder))
    assert set(tasks) == set(tasks_of(folder))
    read = set()
    for config in (tmp_path / "tasks").glob("local_*.yaml"):
        for paths in yaml_data_files(config).values():
            read |= {Path(p).relative_to(local.resolve()).as_posix() for p in paths}
    served_data = {path for path in served if path.endswith(".parquet")}
    if served_data:  # a hub build: downloaded is what is read, nothing more (no test split, no "all" config)
        assert read == served_data
    for bench, task in tasks.items():
        if task.all_subjects:
            assert (
                len(task.subjects)
                == task.all_subjects
                == len(list(builtin_tasks_dir().glob(SPECS[bench]["subjects"])))
            )
            assert sorted(task.subjects) == sorted(
                read_task_yaml(p)["dataset_name"] for p in builtin_tasks_dir().glob(SPECS[bench]["subjects"])
            )


def yaml_data_files(config: Path) -> dict:
    import yaml

    return yaml.safe_load(config.read_text())["dataset_kwargs"]["data_files"]


def test_hellaswag_is_fetched_from_the_parquet_conversion():
    """The globs against the recorded commit select its train and validation files; lm_eval's process_docs reads
    columns that commit's files have (the conversion renamed nothing)."""
    assert selected_files("hellaswag") == [
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    utils_py = (builtin_tasks_dir() / "hellaswag" / "utils.py").read_text()
    used = set(re.findall(r'doc\["(\w+)"\]', utils_py))
    assert used == {"ctx_a", "ctx_b", "activity_label", "endings", "label"} <= set(hub_listing("hellaswag")["columns"])


@pytest.mark.parametrize("folder", FOLDERS)
def test_fixtures_have_the_recorded_columns(folder):
    for path in sorted((FIXTURES / folder).rglob("*.parquet")):
        assert pq.read_schema(path).names == hub_listing(folder)["columns"], path


def test_recorded_split_sizes():
    assert {bench: full_docs(bench) for bench in SPECS} == {
        "ceval": None,  # no stored page with the total of the 52 val files was found
        "cmmlu": None,
        "mmlu": 14042,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "hellaswag": 10042,
        "gsm8k": 1319,
    }


def test_the_installed_hf_cli_takes_every_flag_the_download_passes():
    hf = shutil.which("hf", path=str(Path(sys.executable).parent))
    if hf is None:
        pytest.skip("the hf command-line tool is not installed next to this python")
    help_text = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--repo-type", "--revision", "--include", "--exclude", "--local-dir"):
        assert flag in help_text


def run_download(tmp_path: Path, cli: Path, **env) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    command = [sys.executable, "-m", "tools.download", "--stage", "bench", "--data_dir", str(data), "--hf", str(cli)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})


def test_bench_stage_downloads_every_benchmark_at_its_revision(tmp_path):
    cli, calls = fake_hf_cli(tmp_path)
    done = run_download(tmp_path, cli)
    assert done.returncode == 0, done.stderr
    data = tmp_path / "data" / "bench"
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(c[1], c[c.index("--revision") + 1]) for c in made] == [
        (s.repo, s.revision) for s in BENCH_SOURCES.values()
    ]
    assert made[2] == [
        "download",
        "cais/mmlu",
        "--repo-type",
        "dataset",
        "--revision",
        "c30699e8356da336a370243923dbaf21066bb9fe",
        "--include",
        "*/test-*.parquet",
        "--include",
        "*/dev-*.parquet",
        "--exclude",
        "all/*",
        "--exclude",
        "auxiliary_train/*",
        "--local-dir",
        str(data / "mmlu"),
    ]
    converted = pq.read_table(data / "cmmlu/machine_learning/test-00000-of-00001.parquet")
    assert converted.schema.names == ["Question", "A", "B", "C", "D", "Answer"]
    assert converted.schema.types == [pa.string()] * 6  # "2" stays "2", "NA" and "None" stay text
    assert converted.to_pylist()[0] == {
        "Question": "学习率为多少？",
        "A": "2",
        "B": "0.5",
        "C": "NA",
        "D": "None",
        "Answer": "A",
    }
    manifest = json.loads((data / "hellaswag/MANIFEST.json").read_text())
    assert manifest["revision"] == "9c75cc0"
    assert [f["name"] for f in manifest["files"]] == [
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    tasks = write_task_yamls(data, tmp_path / "tasks", list(SPECS))
    assert {bench: (len(t.subjects), t.all_subjects) for bench, t in tasks.items()} == {
        "ceval": (52, 52),
        "cmmlu": (67, 67),
        "mmlu": (57, 57),
        "arc_easy": (0, 0),
        "arc_challenge": (0, 0),
        "hellaswag": (0, 0),
        "gsm8k": (0, 0),
    }
    assert "summary: 6 arrived, 0 did not" in done.stderr
    again = run_download(tmp_path, cli)
    assert again.stderr.count("already complete, skipping") == 6 and len(calls.read_text().splitlines()) == 6


def test_one_failing_benchmark_does_not_stop_the_others(tmp_path):
    cli, calls = fake_hf_cli(tmp_path)
    done = run_download(tmp_path, cli, FAKE_HF_FAIL="Rowan/hellaswag")
    assert done.returncode == 1
    assert [json.loads(line)[1] for line in calls.read_text().splitlines()][-2:] == ["Rowan/hellaswag", "openai/gsm8k"]
    data = tmp_path / "data" / "bench"
    assert (data / "gsm8k/.complete").is_file() and not (data / "hellaswag/.complete").exists()
    summary = done.stderr[done.stderr.index("summary:") :]
    assert "summary: 5 arrived, 1 did not" in summary
    assert re.search(r"arrived  \S*gsm8k: 2 files, [\d.]+ MB from openai/gsm8k@740312add88f", summary)
    assert re.search(r"MISSING  \S*hellaswag: `\S+ download Rowan/hellaswag \.\.\.` exited with status 1", summary)
    assert done.stderr.strip().splitlines()[-1].endswith("1 download(s) did not arrive: " + str(data / "hellaswag"))


def test_a_folder_downloaded_at_another_revision_is_replaced(tmp_path):
    """Files of an earlier revision would be read alongside the pinned ones: they are removed first."""
    folder = tmp_path / "data" / "bench" / "gsm8k"
    stale = folder / "main" / "test-00000-of-00002.parquet"
    stale.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "gsm8k/main/test-00000-of-00001.parquet", stale)
    manifest = {
        "repo": "openai/gsm8k",
        "requested": ["main/*.parquet"],
        "files": [{"name": "main/test-00000-of-00002.parquet", "bytes": 1}],
    }
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))  # written before revisions were recorded
    (folder / ".complete").touch()
    cli, _ = fake_hf_cli(tmp_path)
    done = run_download(tmp_path, cli)
    assert done.returncode == 0, done.stderr
    assert (
        "holds openai/gsm8k at an unrecorded revision, 740312add88f781978c0658806c59bc2815b9866 is pinned now"
        in done.stderr
    )
    assert not stale.exists()
    assert sorted(p.name for p in (folder / "main").glob("*.parquet")) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    assert json.loads((folder / "MANIFEST.json").read_text())["revision"] == "740312add88f781978c0658806c59bc2815b9866"
