"""run.sh and prepare.sh: each mode's own wiring (the commands it runs), with the programs it calls stubbed at
the process boundary; the stages themselves are tested elsewhere."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT

ENV = {**os.environ, "VENV": sys.prefix}


def sh(*args, env=None, check=True, timeout=600):
    result = subprocess.run(["bash", *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture()
def stub_venv(tmp_path):
    """A venv whose python and accelerate only record how they were called (one JSON line per call)."""
    venv, calls = tmp_path / "venv", tmp_path / "calls.jsonl"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "accelerate"):
        stub = venv / "bin" / name
        record = f"open({str(calls)!r}, 'a').write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
        stub.write_text(f"#!{sys.executable}\nimport json, sys\n{record}")
        stub.chmod(0o755)
    for file in (
        "requirements.txt",
        "requirements/serve.txt",
        "requirements/export.txt",
        "requirements/bench.txt",
        "requirements/tracking.txt",
    ):
        (venv / f".mini_qwen_{Path(file).stem}").write_text((ROOT / file).read_text())  # as if installed
    (venv / ".mini_qwen_torch").touch()
    (venv / "share" / "mini_qwen").mkdir(parents=True)
    (venv / "share" / "mini_qwen" / "qwen.tiktoken").touch()

    def run(*args, **env):
        calls.unlink(missing_ok=True)
        out = sh("run.sh", *args, env={**ENV, "VENV": str(venv), "LOG_DIR": str(tmp_path / "logs"), **env})
        lines = calls.read_text().splitlines() if calls.exists() else []
        return out.stdout, [json.loads(line) for line in lines]

    return run


def test_help_documents_every_mode_and_refuses_unknown_ones():
    """Every mode the script dispatches on is in its help (read from the case statement, not from a list here)."""
    out = sh("run.sh", "-h").stdout
    script = (ROOT / "run.sh").read_text()
    modes = re.findall(r"^  ([a-z][a-z-]*)\)", script, re.M)
    assert len(modes) >= 10
    assert [mode for mode in modes if f"bash run.sh {mode}" not in out] == []
    bad = sh("run.sh", "train", check=False)
    assert bad.returncode == 2 and "unknown mode" in bad.stderr


def test_setup_is_silent_and_runs_nothing_when_everything_is_there(stub_venv):
    out, calls = stub_venv("setup")
    assert out == "" and calls == []


def test_a_stopped_setup_heals_on_the_next_run(stub_venv, tmp_path):
    """Each step is checked on its own: a setup stopped after the requirements (before the Qwen ranks, or before
    torch was recorded) does the missing step next time, and only that."""
    venv = tmp_path / "venv"
    (venv / "share" / "mini_qwen" / "qwen.tiktoken").unlink()
    (venv / ".mini_qwen_torch").unlink()
    _, calls = stub_venv("setup")
    assert calls == [["python", "-c", "import torch"], ["python", "-m", "tools.make_tokenizer", "--fetch_ranks"]]
    (venv / "share" / "mini_qwen" / "qwen.tiktoken").touch()  # what the real fetch leaves
    _, calls = stub_venv("setup")
    assert calls == []
    # A changed requirements file is installed again (stamp differs), and only then recorded.
    (venv / ".mini_qwen_requirements").write_text("old\n")
    _, calls = stub_venv("setup")
    assert calls == [["python", "-m", "pip", "install", "-q", "-r", "requirements.txt"]]
    assert (venv / ".mini_qwen_requirements").read_text() == (ROOT / "requirements.txt").read_text()


def test_setup_installs_the_gpu_wheels_where_nvidia_smi_finds_a_gpu(stub_venv, tmp_path):
    """bitsandbytes (8-bit Adam, which the small-GPU recipes need) and liger-kernel install as wheels; flash-attn,
    a long compile, is not part of it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA T4'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    _, calls = stub_venv("setup", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert calls == [["python", "-m", "pip", "install", "-q", "-r", "requirements/gpu.txt"]]
    wanted = [
        line.split("==")[0]
        for line in (ROOT / "requirements" / "gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sorted(wanted) == ["bitsandbytes", "liger-kernel"]
    _, calls = stub_venv("setup", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert calls == []  # installed once, recorded


def test_each_mode_runs_its_own_command(stub_venv):
    expected = {
        ("pt", "--learning_rate", "3e-4"): [
            "mini_qwen_pt.py",
            "--config",
            "configs/pt_full.yaml",
            "--learning_rate",
            "3e-4",
        ],
        ("sft",): ["mini_qwen_sft.py", "--config", "configs/sft_full.yaml"],
        ("dpo",): ["mini_qwen_dpo.py", "--config", "configs/dpo_full.yaml"],
        ("grpo",): ["mini_qwen_grpo.py", "--config", "configs/grpo_full.yaml"],
        ("eval", "--model_name_or_path", "results/dpo"): ["mini_qwen_eval.py", "--model_name_or_path", "results/dpo"],
        ("demo", "--max_steps", "2"): ["-m", "demo.run_all", "--max_steps", "2"],
        ("test", "-k", "x"): ["-m", "pytest", "-q", "--durations=10", "tests", "-k", "x"],
        ("bench", "--data_dir", "mini_data/bench"): ["-m", "tools.bench", "--data_dir", "mini_data/bench"],
        ("experiment", "packing"): ["-m", "experiments", "packing"],
        ("serve", "--model_name_or_path", "m"): ["-m", "tools.serve", "--model_name_or_path", "m"],
        ("web", "--model_name_or_path", "m"): ["-m", "tools.chat_launcher", "--model_name_or_path", "m"],
        ("export", "--gguf", "m"): ["-m", "tools.export", "--gguf", "m"],
        ("merge", "results/sft_lora/checkpoint-500"): ["-m", "tools.merge", "results/sft_lora/checkpoint-500"],
    }
    for args, command in expected.items():
        _, calls = stub_venv(*args)
        assert calls[-1] == ["python", *command], args
    _, calls = stub_venv("pt", CONFIG="configs/pt_24gb.yaml")
    assert calls[-1] == ["python", "mini_qwen_pt.py", "--config", "configs/pt_24gb.yaml"]
    # The tests need the transformers 4.x side folder and llama.cpp's converter, installed before pytest runs.
    _, calls = stub_venv("test")
    assert ["python", "-m", "tools.compat", "--install_transformers4"] in calls
    assert ["python", "-m", "tools.export", "--install_converter"] in calls


def test_many_gpus_and_machines_launch_through_accelerate(stub_venv):
    _, calls = stub_venv("sft", NUM_GPUS="6")
    assert calls[-1] == [
        "accelerate",
        "launch",
        "--config_file",
        "accelerate_config.yaml",
        "--num_processes",
        "6",
        "--num_machines",
        "1",
        "--machine_rank",
        "0",
        "--main_process_port",
        "29500",
        "mini_qwen_sft.py",
        "--config",
        "configs/sft_full.yaml",
    ]
    # The README's multi-node command, as machine 1 of 2 runs it (test_distributed runs it for real on CPU).
    _, calls = stub_venv(
        "pt",
        NUM_MACHINES="2",
        MACHINE_RANK="1",
        MAIN_PROCESS_IP="10.0.0.1",
        NUM_GPUS="8",
        ACCELERATE_CONFIG="configs/accelerate/multinode_zero2.yaml",
    )
    assert calls[-1][:12] == [
        "accelerate",
        "launch",
        "--config_file",
        "configs/accelerate/multinode_zero2.yaml",
        "--num_processes",
        "16",
        "--num_machines",
        "2",
        "--machine_rank",
        "1",
        "--main_process_ip",
        "10.0.0.1",
    ]


def test_background_mode_logs_to_a_file_and_says_how_to_follow_it(stub_venv, tmp_path):
    out, _ = stub_venv("dpo", BACKGROUND="1")
    log = tmp_path / "logs" / "dpo.log"
    assert f"Follow it with: tail -f {log}" in out
    calls, deadline = [], time.time() + 30
    while time.time() < deadline and not any(c[:2] == ["python", "mini_qwen_dpo.py"] for c in calls):
        time.sleep(0.2)
        lines = (tmp_path / "calls.jsonl").read_text().splitlines() if (tmp_path / "calls.jsonl").exists() else []
        calls = [json.loads(line) for line in lines]
    assert ["python", "mini_qwen_dpo.py", "--config", "configs/dpo_full.yaml"] in calls


# --- prepare.sh ------------------------------------------------------------------------------------------------

# IndustryCorpus2 numbers its files across the whole dataset: folders start at arbitrary global ranks.
LISTING = {
    "film_entertainment/english/high": [f"rank_{i:05d}.parquet" for i in (731, 726, 729, 727, 760, 728)],
    "mathematics_statistics/english/high": [f"rank_{i:05d}.parquet" for i in (1203, 1201, 1207, 1202)],
    "news_media/english/high": [f"rank_{i:05d}.parquet" for i in (402, 401, 405, 403, 404)],
    "news_media/chinese/high": ["rank_00017.parquet", "rank_00016.parquet"],
    "film_entertainment/chinese/high": ["rank_00090.parquet"],
    "mathematics_statistics/chinese/high": ["rank_00120.parquet", "rank_00121.parquet"],
    "tourism_geography/chinese/high": [],
    "tourism_geography/english/high": ["rank_00600.parquet"],
}


@pytest.fixture()
def stub_modelscope(tmp_path):
    """A fake ModelScope: its Python listing API serves LISTING, its CLI records calls and writes the files it is
    asked for (a 150-row parquet each; a folder pattern gets one file)."""
    package = tmp_path / "stubs" / "modelscope" / "hub"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (tmp_path / "listing.json").write_text(json.dumps(LISTING))
    (package / "api.py").write_text(
        "import json, os\n"
        "class HubApi:\n"
        "    def get_dataset_files(self, repo, root_path, recursive, page_number, page_size):\n"
        f"        names = json.load(open({str(tmp_path / 'listing.json')!r})).get(root_path, [])\n"
        "        page = names[(page_number - 1) * page_size: page_number * page_size]\n"
        "        return [{'Path': root_path + '/' + n, 'Type': 'blob'} for n in page]\n"
    )
    log, cli = tmp_path / "calls.txt", tmp_path / "modelscope"
    cli.write_text(f"""#!{sys.executable}
import sys, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
local = Path(args[args.index("--local-dir") + 1])
repo_at = args.index("--repo-type") + 2
names = args[repo_at:args.index("--local-dir")]
if "--include" in args:
    names = [args[args.index("--include") + 1].replace("*", "train-00000.parquet")]
for name in names:
    if "EMPTY" in name:
        continue
    target = local / name
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({{"text": [f"row {{i}}" for i in range(150)]}}), target)
""")
    cli.chmod(0o755)
    env = {
        **ENV,
        "MODELSCOPE": str(cli),
        "PREPARE_CHECK_ONLINE": "0",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(tmp_path / "stubs"),
    }
    return env, log


def downloaded(data: Path) -> dict[str, list[str]]:
    return {
        str(p.relative_to(data / "pt")): sorted(f.name for f in p.glob("*.parquet"))
        for p in sorted((data / "pt").glob("*/*/high"))
    }


def test_prepare_keeps_the_first_three_sorted_files_of_the_capped_folders(tmp_path, stub_modelscope):
    env, log = stub_modelscope
    data = tmp_path / "data"
    domains = "film_entertainment mathematics_statistics news_media"
    args = [
        "prepare.sh",
        "--stage",
        "pt",
        "--stage",
        "sft",
        "--data_dir",
        str(data),
        "--domains",
        domains,
        "--mini",
        "--mini_dir",
        str(tmp_path / "mini"),
    ]
    sh(*args, env=env)
    got = downloaded(data)
    # Capped (upstream's five large English sets): the first three after sorting the listing.
    assert got["film_entertainment/english/high"] == ["rank_00726.parquet", "rank_00727.parquet", "rank_00728.parquet"]
    assert got["mathematics_statistics/english/high"] == [
        "rank_01201.parquet",
        "rank_01202.parquet",
        "rank_01203.parquet",
    ]
    # Everything else: all of it, English news_media included.
    assert got["news_media/english/high"] == sorted(LISTING["news_media/english/high"])
    assert got["mathematics_statistics/chinese/high"] == sorted(LISTING["mathematics_statistics/chinese/high"])
    manifest = json.loads((data / "pt" / "film_entertainment/english/high/MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["files"]] == got["film_entertainment/english/high"]
    assert manifest["bytes"] == sum(
        (data / "pt/film_entertainment/english/high" / n).stat().st_size
        for n in got["film_entertainment/english/high"]
    )
    calls = log.read_text().splitlines()
    assert len(calls) == 6 + 2 and any("--include 7M/*" in c for c in calls)
    minis = sorted((tmp_path / "mini").rglob("*.parquet"))
    assert minis and all(pq.read_metadata(p).num_rows == 100 for p in minis)
    again = sh(*args, env=env)
    assert again.stdout.count("already complete, skipping") + again.stderr.count("already complete, skipping") == 8
    assert len(log.read_text().splitlines()) == 8


def test_prepare_fails_on_an_empty_listing_or_an_empty_download(tmp_path, stub_modelscope):
    env, _ = stub_modelscope
    result = sh(
        "prepare.sh",
        "--stage",
        "pt",
        "--data_dir",
        str(tmp_path / "d"),
        "--domains",
        "tourism_geography",
        env=env,
        check=False,
    )
    assert result.returncode != 0 and "the listing of tourism_geography/chinese/high holds no parquet file" in (
        result.stderr
    )
    listing = json.loads((tmp_path / "listing.json").read_text())
    listing["tourism_geography/chinese/high"] = ["EMPTY_rank_00001.parquet"]  # the CLI will not deliver it
    (tmp_path / "listing.json").write_text(json.dumps(listing))
    result = sh(
        "prepare.sh",
        "--stage",
        "pt",
        "--data_dir",
        str(tmp_path / "d"),
        "--domains",
        "tourism_geography",
        env=env,
        check=False,
    )
    assert result.returncode != 0 and "requested file(s) missing or empty" in result.stderr
    assert not (tmp_path / "d" / "pt" / "tourism_geography/chinese/high/.complete").exists()


def _online() -> bool:
    try:
        socket.create_connection(("www.modelscope.cn", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="this machine is online; the offline message cannot be shown")
def test_prepare_fails_fast_offline(stub_modelscope):
    env, log = stub_modelscope
    start = time.time()
    result = sh("prepare.sh", "--stage", "dpo", env={**env, "PREPARE_CHECK_ONLINE": "1"}, check=False)
    assert result.returncode == 1 and "cannot reach www.modelscope.cn" in result.stderr
    assert time.time() - start < 30 and not log.exists()


def test_mini_data_layout_mirrors_real_schemas():
    root = Path(ROOT / "mini_data")
    zh = sorted(root.glob("pt/*/chinese/high/*.parquet"))
    en = sorted(root.glob("pt/*/english/high/*.parquet"))
    assert len(zh) >= 3 and len(en) >= 3
    zh_cols, en_cols = set(pq.read_schema(zh[0]).names), set(pq.read_schema(en[0]).names)
    assert "text" in zh_cols & en_cols and en_cols < zh_cols
    docs = sum(pq.read_metadata(p).num_rows for p in zh + en)
    assert docs >= 200
    assert pq.read_schema(root / "sft/7M/train-00000-of-00001.parquet").field("id").type == pa.int64()
    assert pq.read_schema(root / "sft/Gen/train-00000-of-00001.parquet").field("id").type == pa.string()
    assert pa.types.is_struct(pq.read_schema(root / "sft/Gen/train-00000-of-00001.parquet").field("label").type)
    dpo = pq.read_table(root / "dpo/train-00000-of-00001.parquet")
    assert {"prompt", "chosen", "rejected", "task_category", "id"} <= set(dpo.column_names) and dpo.num_rows >= 100


def test_prepare_runs_in_the_projects_environment_not_whatever_is_on_path(tmp_path, stub_modelscope):
    """A fresh clone: no modelscope on PATH, python3 without pyarrow. prepare.sh makes (here: finds ready) the
    project's environment and runs the environment's python and modelscope, for every stage; --help needs nothing."""
    env, log = stub_modelscope
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "modelscope").write_text(Path(env["MODELSCOPE"]).read_text())
    for name in ("python", "modelscope"):
        (venv / "bin" / name).chmod(0o755)
    for file in ("requirements.txt",):  # setup finds everything in place: it runs nothing
        (venv / f".mini_qwen_{Path(file).stem}").write_text((ROOT / file).read_text())
    (venv / ".mini_qwen_torch").touch()
    (venv / "share" / "mini_qwen").mkdir(parents=True)
    (venv / "share" / "mini_qwen" / "qwen.tiktoken").touch()
    bare = {k: v for k, v in env.items() if k not in ("MODELSCOPE", "PYTHON")}
    bare.update(VENV=str(venv), PATH="/usr/bin:/bin")
    help_text = sh("prepare.sh", "--help", env={"PATH": "/usr/bin:/bin"}).stdout
    assert "--stage" in help_text
    sh("prepare.sh", "--stage", "dpo", "--data_dir", str(tmp_path / "data"), env=bare)
    assert log.read_text().startswith("download --repo-type dataset BAAI/Infinity-Preference")
    assert list((tmp_path / "data" / "dpo").rglob("*.parquet"))
