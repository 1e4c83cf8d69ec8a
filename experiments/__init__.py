"""Upstream's experiments as commands: ``bash run.sh experiment NAME`` (``python -m experiments NAME``).

Each study trains its variants with the stages' own main() and the demo recipes, scores them, and writes
``results/experiments/<NAME>/report.md`` with a figure, a table over seeds, greedy answers, what can be concluded
and the commands for the full-size version on GPUs.
"""
