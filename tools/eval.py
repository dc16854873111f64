"""Evaluate a method: ``python tools/eval.py method=<m> dataset=<d> [ckpt=<file|run dir>]``.

Writes ``<run dir>/metrics.json`` (and predictions with ``save_predictions=true``).
"""

from sambench.cli.jobs import evaluate_job
from sambench.cli.launch import launch

if __name__ == "__main__":
    launch(evaluate_job, "eval")
