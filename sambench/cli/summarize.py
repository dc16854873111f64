"""Leaderboard over run folders: mean ± std over seeds per (method, dataset, backbone).

``python tools/summarize.py RUN_DIR [RUN_DIR ...] [--csv out.csv] [--metrics mIoU,oIoU]
[--chart out.png]``. A folder without ``metrics.json`` is searched recursively for run folders
(a run folder has ``config.yaml``; hidden folders are skipped), so ``summarize.py outputs/`` works.

Statistics: the std is the *sample* standard deviation over seeds (``statistics.stdev``, n - 1);
with one seed only the mean is shown and the CSV std is empty. The table shows 2 decimals, the CSV
full precision. Only top-level numbers of ``metrics.json`` count (nested per-class tables are
ignored). Unusable folders get a one-line warning on stderr; none usable -> exit status 2.

The cost of each run (``metrics.json``'s ``cost``, written by the jobs: trainable parameters,
peak memory, samples/s, step time; see :mod:`sambench.engine.cost`) follows the scores as its
own columns (:data:`COST_COLUMNS`, mean ± std over seeds too, parameters as a count); a run
without it shows ``-`` there. The CSV has every cost key.

A dataset with folds (the one-shot benchmarks' ``dataset.fold``) is labelled ``<name>/fold<i>``, so
runs of different folds are never averaged as if they were seeds.

When the runs use more than one backbone (or with ``--pivot METRIC``), one more table per dataset
follows: methods as rows, backbones as columns, one metric in the cells (``--pivot``, else the
first metric the dataset's runs report), ``-`` where a pairing has no run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KEY_FIELDS = ("method", "dataset", "backbone")
#: the cost keys of ``metrics.json``'s ``cost`` (sambench/engine/cost.py), in column order
COST_KEYS = ("params_trainable", "params_total", "peak_mem_mib", "samples_per_s", "step_time_s")
#: the cost columns of the table: key -> decimals (None: a parameter count, 1.2M / 35.4k)
COST_COLUMNS = {"params_trainable": None, "peak_mem_mib": 0, "samples_per_s": 2, "step_time_s": 3}


@dataclass(frozen=True)
class RunResult:
    """One run folder's identity and its top-level numeric metrics."""

    folder: Path
    method: str
    dataset: str
    backbone: str
    seed: object
    metrics: dict[str, float]
    cost: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupSummary:
    """Metrics of all seeds of one (method, dataset, backbone): name -> list of values."""

    method: str
    dataset: str
    backbone: str
    values: dict[str, list[float]]
    num_runs: int
    cost: dict[str, list[float]] = field(default_factory=dict)


def warn(message: str) -> None:
    """One line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def find_run_folders(paths: list[Path]) -> list[Path]:
    """Run folders named by ``paths``: the path itself if it holds ``metrics.json`` or
    ``config.yaml``, else every run folder below it (sorted, hidden folders skipped)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            warn(f"{path}: not a folder; skipped")
            continue
        if _is_run_folder(path):
            found.append(path)
            continue
        below = []
        for root, subfolders, _ in os.walk(path):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            if _is_run_folder(Path(root)):
                below.append(Path(root))
                subfolders[:] = []  # a run's own subfolders (vis/, wandb/) are not runs
        if not below:
            warn(f"{path}: no metrics.json and no run folders below it; skipped")
        found.extend(below)
    return list(dict.fromkeys(found))


def _is_run_folder(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "config.yaml").is_file()


def load_run(folder: Path) -> RunResult | None:
    """The run in ``folder``, or None after a warning if its config or metrics are unusable."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        method, dataset, backbone = (str(_lookup(config, f"{key}.name")) for key in KEY_FIELDS)
        fold = (config.get("dataset") or {}).get("fold") if isinstance(config, dict) else None
        if fold is not None:  # one-shot benchmarks: each fold is its own row (papers report their mean)
            dataset = f"{dataset}/fold{fold}"
    except (OSError, yaml.YAMLError, KeyError, AttributeError) as error:
        warn(f"{folder}: unusable config.yaml ({_describe(error)}); skipped")
        return None
    try:
        seed = _lookup(config, "trainer.seed")
    except KeyError:
        seed = None
    try:
        raw = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        warn(f"{folder}: unusable metrics.json ({_describe(error)}); skipped")
        return None
    return RunResult(folder, method, dataset, backbone, seed, _numbers(raw), load_cost(folder, raw.get("cost")))


def _numbers(raw: dict) -> dict[str, float]:
    return {name: float(value) for name, value in raw.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def load_cost(folder: Path, raw) -> dict[str, float]:
    """The numbers of a run's ``metrics.json`` ``cost`` (empty when absent; a warning when unusable)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        warn(f"{folder}: unusable cost in metrics.json (not a JSON object); its cost columns are left empty")
        return {}
    return _numbers(raw)


def _lookup(config: object, dotted: str) -> object:
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"missing key {dotted}")
        value = value[part]
    return value


def _describe(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "file missing"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.strip("'\"")


def group_runs(runs: list[RunResult], metric_names: list[str]) -> list[GroupSummary]:
    """One summary per (method, dataset, backbone), sorted by method, dataset, backbone."""
    by_key: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        by_key[(run.method, run.dataset, run.backbone)].append(run)
    summaries = []
    for key in sorted(by_key):
        members = by_key[key]
        seeds = [run.seed for run in members if run.seed is not None]
        if len(seeds) != len(set(map(str, seeds))):
            seed_list = ", ".join(sorted(map(str, seeds)))
            warn(f"{'/'.join(key)}: runs share a seed (seeds {seed_list}); all are averaged")
        values = {
            name: [run.metrics[name] for run in members if name in run.metrics]
            for name in metric_names
        }
        cost = {name: [run.cost[name] for run in members if name in run.cost] for name in COST_KEYS}
        summaries.append(GroupSummary(*key, values=values, num_runs=len(members), cost=cost))
    return summaries


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (None for fewer than 2 values; both None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_cell(values: list[float]) -> str:
    """``"mean ± std"`` with 2 decimals, just the mean for one value, ``-`` for none."""
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_count(values: list[float]) -> str:
    """A parameter count's mean as ``93.7M`` / ``35.4k`` / ``812``, ``-`` for none."""
    mean, _ = mean_std(values)
    if mean is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(mean) >= scale:
            return f"{mean / scale:.1f}{suffix}"
    return f"{mean:.0f}"


def format_cost(name: str, values: list[float]) -> str:
    """A cost cell: a count (:func:`format_count`) or ``"mean ± std"`` with the column's decimals."""
    digits = COST_COLUMNS[name]
    if digits is None:
        return format_count(values)
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def cost_columns(summaries: list[GroupSummary]) -> list[str]:
    """The cost columns to show: none when no run has a cost."""
    return list(COST_COLUMNS) if any(v for group in summaries for v in group.cost.values()) else []


def markdown_table(summaries: list[GroupSummary], metric_names: list[str]) -> str:
    """The leaderboard as a Markdown table: the scores, then the cost columns (if any run has them)."""
    costs = cost_columns(summaries)
    header = [*KEY_FIELDS, "n", *metric_names, *costs]
    align = ["---"] * len(KEY_FIELDS) + ["---:"] * (1 + len(metric_names) + len(costs))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for group in summaries:
        cells = [group.method, group.dataset, group.backbone, str(group.num_runs)]
        cells += [format_cell(group.values[name]) for name in metric_names]
        cells += [format_cost(name, group.cost.get(name, [])) for name in costs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_tables(summaries: list[GroupSummary], metric: str | None = None) -> str:
    """Per dataset, a Markdown table of methods (rows) × backbones (columns) of one metric
    (``metric``, else the first one the dataset's runs report); ``-`` for pairings without runs."""
    blocks = []
    for dataset in sorted({group.dataset for group in summaries}):
        groups = [group for group in summaries if group.dataset == dataset]
        name = metric or next((n for group in groups for n, v in group.values.items() if v), None)
        if name is None:
            continue
        backbones = sorted({group.backbone for group in groups})
        cell = {(group.method, group.backbone): format_cell(group.values.get(name, [])) for group in groups}
        lines = [f"{dataset}: {name}", "", "| method | " + " | ".join(backbones) + " |",
                 "|---|" + "|".join("---:" for _ in backbones) + "|"]
        for method in sorted({group.method for group in groups}):
            lines.append(f"| {method} | " + " | ".join(cell.get((method, b), "-") for b in backbones) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_csv(path: Path, summaries: list[GroupSummary], metric_names: list[str]) -> None:
    """CSV with method,dataset,backbone,n,<metric>_mean,<metric>_std (empty = not available),
    then the same for every cost key when any run has a cost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    costs = list(COST_KEYS) if cost_columns(summaries) else []
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        stat_columns = [f"{name}_{stat}" for name in [*metric_names, *costs] for stat in ("mean", "std")]
        writer.writerow([*KEY_FIELDS, "n", *stat_columns])
        for group in summaries:
            row = [group.method, group.dataset, group.backbone, group.num_runs]
            for values in [*(group.values[name] for name in metric_names), *(group.cost[name] for name in costs)]:
                row += ["" if x is None else repr(x) for x in mean_std(values)]
            writer.writerow(row)


def write_chart(path: Path, summaries: list[GroupSummary], metric_names: list[str]) -> None:
    """Bar chart PNG: one panel per metric, datasets on the x axis, one bar per method/backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(group.method, group.backbone, group.dataset): group for group in summaries}
    datasets = sorted({group.dataset for group in summaries})
    series = sorted({(group.method, group.backbone) for group in summaries})
    show_backbone = len({backbone for _, backbone in series}) > 1
    width = 0.8 / len(series)
    panel_width = max(4.0, 0.5 * len(datasets) * len(series))
    figure, axes = plt.subplots(
        1, len(metric_names), figsize=(panel_width * len(metric_names), 4), squeeze=False
    )
    for axis, name in zip(axes[0], metric_names):
        for index, (method, backbone) in enumerate(series):
            positions, means, stds = [], [], []
            for position, dataset in enumerate(datasets):
                group = by_key.get((method, backbone, dataset))
                mean, std = mean_std(group.values[name]) if group else (None, None)
                if mean is not None and math.isfinite(mean):
                    positions.append(position - 0.4 + width * (index + 0.5))
                    means.append(mean)
                    stds.append(std or 0.0)
            label = f"{method} ({backbone})" if show_backbone else method
            axis.bar(positions, means, width, yerr=stds, capsize=3, label=label)
        axis.set_xticks(range(len(datasets)), datasets)
        axis.set_title(name)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line of ``tools/summarize.py``."""
    parser = argparse.ArgumentParser(
        prog="summarize.py",
        description="Mean ± std over seeds per (method, dataset, backbone) from run folders.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
        help="run folders, or folders to search for them (e.g. outputs/)",
    )
    parser.add_argument(
        "--csv", type=Path, default=Path("summary.csv"),
        help="CSV output path (default: summary.csv in the current folder)",
    )
    parser.add_argument(
        "--metrics", default=None, help="comma-separated metric names (default: every metric found except step and num_*)"
    )
    parser.add_argument("--chart", type=Path, default=None, help="also write a bar chart PNG here")
    parser.add_argument("--pivot", default=None, metavar="METRIC",
                        help="also print method × backbone tables of METRIC per dataset (an empty METRIC: each dataset's "
                             "first metric, which is also what runs over several backbones get without the flag)")
    return parser.parse_args(argv)


def is_bookkeeping(name: str) -> bool:
    """Counts and positions that are not scores (``step``, ``num_images``, ...)."""
    return name == "step" or name.startswith("num_")


def main(argv: list[str]) -> int:
    """Print the leaderboard, write the CSV (and chart); 0 on success, 2 if no run is usable."""
    try:
        args = parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    runs = [run for folder in find_run_folders(args.run_dirs) if (run := load_run(folder))]
    if not runs:
        print(
            "error: no usable run folders (each needs config.yaml and metrics.json)",
            file=sys.stderr,
        )
        return 2
    if args.metrics:
        metric_names = [name.strip() for name in args.metrics.split(",") if name.strip()]
        for name in metric_names:
            if not any(name in run.metrics for run in runs):
                warn(f"metric {name!r} is in no metrics.json")
    else:  # every score; bookkeeping numbers (step, num_*) only when asked for by name
        metric_names = list(dict.fromkeys(
            name for run in runs for name in run.metrics if not is_bookkeeping(name)
        ))
    summaries = group_runs(runs, metric_names)
    print(markdown_table(summaries, metric_names))
    if args.pivot is not None or len({run.backbone for run in runs}) > 1:
        print("\n" + pivot_tables(summaries, args.pivot or None))
    write_csv(args.csv, summaries, metric_names)
    print(f"wrote {args.csv}", file=sys.stderr)
    if args.chart is not None:
        if metric_names:
            write_chart(args.chart, summaries, metric_names)
            print(f"wrote {args.chart}", file=sys.stderr)
        else:
            warn("no metrics to chart; --chart ignored")
    return 0
