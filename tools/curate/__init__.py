"""Data curation at corpus scale on HF datatrove: quality columns, text heuristics, exact and near-duplicate
removal (MinHash-LSH) and benchmark decontamination, with a ledger of every removal and a report a person reads.

    bash run.sh curate                                          # data/pt -> data/curated/pt (configs/curate_pt.yaml)
    python -m tools.curate --config configs/curate_pt.yaml --workers 16
    python -m tools.curate --config configs/curate_sft.yaml     # Infinity-Instruct conversations
    python -m tools.curate --config configs/curate_dpo.yaml     # Infinity-Preference pairs
    python -m tools.curate --config configs/curate_pt.yaml --executor slurm --slurm_partition cpu --tasks 512
    python mini_qwen_pt.py --config configs/pt_full.yaml --data_dir data/curated/pt   # train on the curated copy

Modules: ``recipe`` (arguments), ``words`` (words and n-gram hashes, vectorized), ``heuristics`` (repetition
measures), ``documents`` (rows in and out, the ledger), ``filters`` (the per-document steps and MinHash
signatures), ``pipeline`` (the datatrove stages and executors), ``report`` (curation_report.md), ``run`` (main).
"""
