"""The curation recipe: every path, threshold and engine setting, from ``configs/curate_*.yaml`` and/or flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("pt", "sft", "dpo")
EXECUTORS = ("local", "slurm")
# IndustryCorpus2's per-row quality columns, each with the recipe argument that bounds it. The English files lack
# perplexity and flagged_words_ratio: a rule whose column a file lacks does not apply to its rows (and the
# report says how many rows that was).
QUALITY_BOUNDS = {
    "quality_score": "min_quality_score",
    "perplexity": "max_perplexity",
    "alnum_ratio": "min_alnum_ratio",
    "char_rep_ratio": "max_char_rep_ratio",
    "word_rep_ratio": "max_word_rep_ratio",
    "special_char_ratio": "max_special_char_ratio",
    "flagged_words_ratio": "max_flagged_words_ratio",
}


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class CurateArguments:
    kind: str = field(
        default="pt",
        metadata=_help(
            "What the input holds: pt (IndustryCorpus2 text), sft "
            "(Infinity-Instruct conversations) or dpo (Infinity-Preference "
            "pairs).",
            choices=list(KINDS),
        ),
    )
    input_dir: str = field(default="data/pt", metadata=_help("Folder of parquet files, read at any depth."))
    output_dir: str = field(
        default="data/curated/pt",
        metadata=_help(
            "Where the curated copy goes, in the same layout (same relative paths and columns), with "
            "curation_report.md and its figures."
        ),
    )
    work_dir: str = field(
        default="results/curate/pt",
        metadata=_help(
            "Intermediate files: the ledger (one row per input row: kept, or removed by which step and why), "
            "dedup signatures, the decontamination index, and the engine's logs. Re-running resumes here."
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_help("Delete output_dir and work_dir first. Needed when they hold a run of another recipe."),
    )

    # The engine (datatrove).
    executor: str = field(
        default="local",
        metadata=_help(
            "local: worker processes on this machine; slurm: sbatch job arrays, one per stage, chained by "
            "dependencies (the same pipeline).",
            choices=list(EXECUTORS),
        ),
    )
    tasks: int = field(
        default=0, metadata=_help("Shards of the input; one file is never split. 0 = one task per input file.")
    )
    workers: int = field(default=1, metadata=_help("Local executor: tasks run at once (processes)."))
    slurm_partition: str | None = field(default=None, metadata=_help("Slurm partition (executor=slurm)."))
    slurm_time: str = field(default="24:00:00", metadata=_help("Slurm time limit per task."))
    slurm_cpus_per_task: int = field(default=1, metadata=_help("Slurm CPUs per task."))
    slurm_mem_per_cpu_gb: int = field(default=4, metadata=_help("Slurm memory per CPU, GB."))
    slurm_env_command: str | None = field(
        default=None,
        metadata=_help(
            "Shell command each Slurm task runs first. Default: activate the environment this command runs in and "
            "put the repository on PYTHONPATH (both must be on a filesystem the nodes see)."
        ),
    )

    # 1. IndustryCorpus2's quality columns (pt only). Unset = no bound.
    min_quality_score: float | None = field(default=None, metadata=_help("Lowest quality_score kept."))
    max_perplexity: float | None = field(default=None, metadata=_help("Highest perplexity kept."))
    min_alnum_ratio: float | None = field(default=None, metadata=_help("Lowest alnum_ratio kept."))
    max_char_rep_ratio: float | None = field(default=None, metadata=_help("Highest char_rep_ratio kept."))
    max_word_rep_ratio: float | None = field(default=None, metadata=_help("Highest word_rep_ratio kept."))
    max_special_char_ratio: float | None = field(default=None, metadata=_help("Highest special_char_ratio kept."))
    max_flagged_words_ratio: float | None = field(default=None, metadata=_help("Highest flagged_words_ratio kept."))

    # 2. Heuristics computed from the text (pt only). A Chinese character counts as a word.
    min_words: int = field(default=50, metadata=_help("Fewest words (Chinese characters count one each)."))
    max_words: int = field(default=100_000, metadata=_help("Most words."))
    max_symbol_ratio: float = field(
        default=0.3, metadata=_help("Highest share of non-space characters that are neither letters nor digits.")
    )
    max_duplicate_line_fraction: float = field(
        default=0.2, metadata=_help("Highest share of characters in lines that repeat an earlier line (Gopher: 0.2).")
    )
    top_ngram_sizes: list[int] = field(
        default_factory=lambda: [2, 3, 4], metadata=_help("n of the 'top n-gram' rules (Gopher), in words.")
    )
    top_ngram_limits: list[float] = field(
        default_factory=lambda: [0.2, 0.18, 0.16],
        metadata=_help("Highest share of characters the most frequent n-gram may cover, per size."),
    )
    duplicate_ngram_sizes: list[int] = field(
        default_factory=lambda: [5, 6, 7, 8, 9, 10],
        metadata=_help("n of the 'duplicated n-grams' rules (Gopher), in words."),
    )
    duplicate_ngram_limits: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10],
        metadata=_help("Highest share of characters in repeated n-grams, per size."),
    )
    chinese_ngram_scale: int = field(
        default=2,
        metadata=_help(
            "A Chinese document's repetition n-grams are this many times longer (in characters) than an English "
            "one's (in words): a Chinese word is about two characters."
        ),
    )

    # 3. Exact and near-duplicates.
    minhash_ngram: int = field(default=5, metadata=_help("Shingle size in words (Chinese: characters)."))
    minhash_buckets: int = field(default=16, metadata=_help("LSH bands."))
    minhash_hashes_per_bucket: int = field(
        default=6,
        metadata=_help(
            "Hashes per band. 16 x 6 finds a pair at Jaccard 0.8 with probability 0.992, at 0.5 with 0.22."
        ),
    )
    minhash_seed: int = field(default=1, metadata=_help("Seed of the MinHash functions (same for every task)."))

    # 4. Decontamination.
    decontaminate: bool = field(default=True, metadata=_help("Remove documents sharing n-grams with benchmarks."))
    bench_dir: str = field(
        default="data/bench",
        metadata=_help(
            "Benchmark parquet files (prepare.sh --stage bench, or mini_data/bench); their evaluated splits are "
            "indexed."
        ),
    )
    decont_ngram: int = field(
        default=13,
        metadata=_help(
            "Shared n-gram length (words; Chinese: characters) that counts as contamination (13 as in GPT-3)."
        ),
    )

    # The report.
    tokenizer_name_or_path: str = field(
        default="models/Qwen2.5-0.5B-Instruct", metadata=_help("Tokenizer whose tokens the report counts (PT's).")
    )
    token_sample_every: int = field(
        default=1,
        metadata=_help(
            "Tokenize every k-th document and estimate the others from their bytes and their group's bytes per "
            "token: 1 = exact counts; 10 saves ~0.2 s of CPU per MB; 0 = no token counts."
        ),
    )
    examples_per_reason: int = field(default=3, metadata=_help("Examples shown per removal reason (per task)."))
    example_chars: int = field(default=300, metadata=_help("Characters of each example shown."))

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.top_ngram_sizes) != len(self.top_ngram_limits):
            raise ValueError("top_ngram_sizes and top_ngram_limits must have the same length")
        if len(self.duplicate_ngram_sizes) != len(self.duplicate_ngram_limits):
            raise ValueError("duplicate_ngram_sizes and duplicate_ngram_limits must have the same length")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("executor=slurm needs slurm_partition")
        if self.workers < 1 or self.tasks < 0 or self.token_sample_every < 0:
            raise ValueError("workers must be >= 1, tasks and token_sample_every >= 0")

    def quality_bounds(self) -> dict[str, tuple[str, float]]:
        """{column: ("min" | "max", bound)} for the bounds the recipe sets."""
        bounds = {}
        for column, argument in QUALITY_BOUNDS.items():
            value = getattr(self, argument)
            if value is not None:
                bounds[column] = (argument[:3], float(value))
        return bounds

    def to_dict(self) -> dict:
        return asdict(self)
