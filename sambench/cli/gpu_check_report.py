"""The pure part of ``tools/gpu_check.py``: verdicts (what PASS and FAIL mean) and the Markdown
tables, from the numbers the checks collected. Timings are reported beside the papers' figures,
never judged."""

from __future__ import annotations

import math
import statistics

from sambench.cli.bench_report import markdown_table
from sambench.cli.gpu_check_methods import PAPER, WORKERS

PASS, FAIL = "PASS", "FAIL"
#: DIT Table 4 (L-DIT vs SAM-text, ms) and SSPrompt Table 7 (SSPrompt vs CoOp, ms/image and GB)
DIT_TABLE_4 = {"dit_layerwise": 123.0, "sam_text": 123.0}
SSPROMPT_TABLE_7 = {"ssprompt": (56.0, 3.82), "coop": (87.5, 8.22)}


def verdict(passed: bool) -> str:
    return PASS if passed else FAIL


def number(value, digits: int = 1) -> str:
    """A table cell: the number with ``digits`` decimals, or ``n/a`` for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def compare_metrics(one: dict, many: dict) -> tuple[bool, str]:
    """1-process vs N-process ``metrics.json``: equal (every key, exact values; the runs' ``cost``
    left out, it differs by nature) or what differs."""
    one, many = ({k: v for k, v in m.items() if k != "cost"} for m in (one, many))
    if one == many:
        return True, f"{len(one)} metrics identical"
    keys = sorted(set(one) | set(many))
    differences = [f"{k}: {one.get(k, '(missing)')} vs {many.get(k, '(missing)')}" for k in keys if one.get(k) != many.get(k)]
    return False, "; ".join(differences)


def final_loss(records: list[dict]) -> float:
    """The sum of the ``train/loss*`` terms of the last ``log.jsonl`` record that has them."""
    losses = [r for r in records if any(k.startswith("train/loss") for k in r)]
    if not losses:
        return float("nan")
    return sum(v for k, v in losses[-1].items() if k.startswith("train/loss"))


def ms_per_step(records: list[dict]) -> float:
    """Median wall ms per step between consecutive logged steps (``logger.log_every=1``): the
    first step (start-up, warm-up) has no predecessor and is left out."""
    stamped = [(r["step"], r["time"]) for r in records if "time" in r and "step" in r and any(k.startswith("train/") for k in r)]
    gaps = [(t1 - t0) * 1000 / (s1 - s0) for (s0, t0), (s1, t1) in zip(stamped, stamped[1:]) if s1 > s0]
    return statistics.median(gaps) if gaps else float("nan")


def collectives_table(result: dict, cross_gpu: bool) -> tuple[str, bool]:
    """Rows of the collectives worker's JSON; True when every check passed."""
    ranks, backend = result["world_size"], result["backend"]
    rows = [[c["name"], ranks, backend, verdict(c["passed"]), c["detail"]] for c in result["checks"]]
    bw = result["bandwidth"]
    busbw = number(bw["busbw_gbs"], 2) if ranks > 1 else "n/a (1 rank: no link crossed)"
    rows.append([f"all_reduce {bw['mib']} MiB bandwidth", ranks, backend, "timing",
                 f"{bw['ms']:.1f} ms; algbw {bw['algbw_gbs']:.2f} GB/s; busbw {busbw} GB/s"])
    if not cross_gpu:
        rows.append(["cross-GPU collectives", ranks, backend, "skipped", "need >= 2 GPUs (this is a 1-process NCCL group)"])
    return markdown_table(["check", "ranks", "backend", "result", "detail"], rows), all(c["passed"] for c in result["checks"])


def methods_table(rows: list[dict], tiny: bool) -> str:
    """One line per measured method (the workers' rows), the paper's figure beside it."""
    lines = []
    for row in rows:
        worker = next(w for w, (names, _, _) in WORKERS.items() if row["method"] in names)
        sizes = WORKERS[worker][2 if tiny else 1]
        if "error" in row:
            lines.append([row["method"], sizes, "ERROR", "ERROR", "ERROR", "", row["error"]])
            continue
        train = number(row["train_ms"]) if row["train_ms"] is not None else "n/a (training-free)"
        if row["method"] == "persam_f":
            train = f"{number(row['train_ms'], 2)} (fit {row['fit_iterations']} it: {row['fit_s']:.2f} s)"
        lines.append([row["method"], sizes, train, number(row["infer_ms"]), number(row["memory_mib"], 0),
                      f"{row['trainable']:,}", PAPER[row["method"]]])
    memory = "peak memory MiB" + (" (one shared process: growth so far)" if tiny else "")
    return markdown_table(["method", "sizes (random weights)", "train ms/step", "infer ms/image", memory,
                           "trainable params", "paper"], lines)


def paper_comparisons(rows: list[dict], shared_process: bool = False) -> str:
    """Measured ratios beside the papers' (DIT Table 4, SSPrompt Table 7), PerSAM-F's fit time,
    OV-SAM's FPS. ``shared_process`` (``--tiny``: every method in one process): no memory ratio."""
    by_name = {r["method"]: r for r in rows if "error" not in r}

    def ratio(a: str, b: str, key: str):
        if a in by_name and b in by_name and by_name[b][key]:
            return by_name[a][key] / by_name[b][key]
        return None

    (ss_ms, ss_gb), (co_ms, co_gb) = SSPROMPT_TABLE_7["ssprompt"], SSPROMPT_TABLE_7["coop"]
    lines = [
        ["L-DIT / SAM-text inference time", number(ratio("dit_layerwise", "sam_text", "infer_ms"), 2),
         f"{DIT_TABLE_4['dit_layerwise'] / DIT_TABLE_4['sam_text']:.2f} (123 ms = 123 ms, DIT Table 4)"],
        ["SSPrompt / CoOp training time", number(ratio("ssprompt", "coop", "train_ms"), 2),
         f"{ss_ms / co_ms:.2f} ({ss_ms} / {co_ms} ms, SSPrompt Table 7)"],
        ["SSPrompt / CoOp training memory",
         "n/a (one shared process)" if shared_process else number(ratio("ssprompt", "coop", "memory_mib"), 3),
         f"{ss_gb / co_gb:.3f} ({ss_gb} / {co_gb} GB, SSPrompt Table 7)"],
    ]
    if "persam_f" in by_name:
        fit = by_name["persam_f"]
        lines.append([f"PerSAM-F fitting, {fit['fit_iterations']} iterations (s)", number(fit["fit_s"], 2),
                      "'within 10 seconds' (PerSAM abstract)"])
    if "ovsam" in by_name:
        lines.append(["OV-SAM images/s (1 image, GT boxes)", number(1000 / by_name["ovsam"]["infer_ms"], 2),
                      "no FPS in the paper; Table 1: 1,180 GFLOPs, 304 M params"])
    return markdown_table(["comparison", "measured", "paper"], lines)
