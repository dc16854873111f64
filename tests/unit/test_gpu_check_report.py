"""The pure part of tools/gpu_check.py: what decides PASS / FAIL, and the tables and paper ratios."""

from __future__ import annotations

import math

import pytest

from sambench.cli.gpu_check import parse_args
from sambench.cli.gpu_check_report import (
    collectives_table, compare_metrics, final_loss, methods_table, ms_per_step, number, paper_comparisons,
)


def test_equal_metrics_pass_and_any_difference_fails_naming_the_key():
    one = {"mIoU": 12.675906211871544, "num_images": 5, "per_class": {"ellipse": 10.0}}
    assert compare_metrics(one, dict(one)) == (True, "3 metrics identical")
    closest = math.nextafter(one["mIoU"], 100.0)  # one ulp apart: still a difference
    passed, detail = compare_metrics(one, {**one, "mIoU": closest})
    assert not passed and detail == f"mIoU: {one['mIoU']} vs {closest}"
    passed, detail = compare_metrics(one, {k: v for k, v in one.items() if k != "num_images"})
    assert not passed and "num_images: 5 vs (missing)" in detail


def test_final_loss_sums_the_last_loss_terms_and_a_nan_is_not_finite():
    records = [{"step": 1, "time": 10.0, "train/loss_dice": 0.5, "train/loss_bce": 0.25, "train/lr": 1e-3},
               {"step": 2, "time": 10.5, "train/loss_dice": 0.25, "train/loss_bce": 0.125},
               {"step": 2, "eval/mIoU": 3.0}]
    assert final_loss(records) == 0.375
    assert not math.isfinite(final_loss([{"step": 1, "train/loss_bce": float("nan")}]))
    assert math.isnan(final_loss([{"step": 1, "eval/mIoU": 3.0}]))


def test_ms_per_step_leaves_the_first_step_out():
    records = [{"step": s, "time": t, "train/loss": 1.0} for s, t in ((1, 100.0), (2, 100.2), (4, 100.6), (5, 100.9))]
    assert ms_per_step(records) == pytest.approx(200.0)  # gaps 200, 200/step, 300 -> median 200
    assert math.isnan(ms_per_step(records[:1]))


def collectives_result(all_reduce_ok: bool, world: int = 2) -> dict:
    checks = [{"name": "all_reduce (sum, exact value)", "passed": all_reduce_ok, "detail": "sum"},
              {"name": "barrier", "passed": True, "detail": "returned"}]
    return {"world_size": world, "backend": "gloo", "checks": checks,
            "bandwidth": {"mib": 256, "ms": 100.0, "algbw_gbs": 2.68, "busbw_gbs": 2.68}}


def test_collectives_table_fails_when_a_rank_got_a_wrong_value():
    text, passed = collectives_table(collectives_result(True), cross_gpu=True)
    assert passed and "| all_reduce (sum, exact value) | 2 | gloo | PASS |" in text and "busbw 2.68 GB/s" in text
    text, passed = collectives_table(collectives_result(False), cross_gpu=True)
    assert not passed and "| all_reduce (sum, exact value) | 2 | gloo | FAIL |" in text


def test_one_gpu_says_cross_gpu_checks_need_two():
    text, passed = collectives_table(collectives_result(True, world=1), cross_gpu=False)
    assert passed and "need >= 2 GPUs" in text and "busbw n/a (1 rank" in text


ROWS = [
    {"method": "ssprompt", "train_ms": 32.0, "infer_ms": 10.0, "memory_mib": 465.0, "trainable": 5267},
    {"method": "coop", "train_ms": 50.0, "infer_ms": 12.0, "memory_mib": 1000.0, "trainable": 1024},
    {"method": "dit_layerwise", "train_ms": 300.0, "infer_ms": 126.0, "memory_mib": 900.0, "trainable": 10},
    {"method": "sam_text", "train_ms": 290.0, "infer_ms": 120.0, "memory_mib": 880.0, "trainable": 9},
    {"method": "persam", "train_ms": None, "infer_ms": 80.0, "memory_mib": 3000.0, "trainable": 0},
    {"method": "persam_f", "train_ms": 2.5, "infer_ms": 70.0, "memory_mib": 3000.0, "trainable": 2, "fit_s": 2.5,
     "fit_iterations": 1000},
    {"method": "ovsam", "error": "RuntimeError: CUDA out of memory"},
]


def test_paper_ratios_are_measured_beside_the_papers():
    text = paper_comparisons(ROWS)
    assert "| L-DIT / SAM-text inference time | 1.05 | 1.00 (123 ms = 123 ms, DIT Table 4) |" in text
    assert "| SSPrompt / CoOp training time | 0.64 | 0.64 (56.0 / 87.5 ms, SSPrompt Table 7) |" in text
    assert "| SSPrompt / CoOp training memory | 0.465 | 0.465 (3.82 / 8.22 GB, SSPrompt Table 7) |" in text
    assert "| PerSAM-F fitting, 1000 iterations (s) | 2.50 |" in text
    assert "OV-SAM" not in text  # its worker failed: no ratio from missing numbers
    assert "n/a" in paper_comparisons([ROWS[0]]) and number(None) == "n/a" and number(float("nan")) == "n/a"
    shared = paper_comparisons(ROWS, shared_process=True)  # --tiny: one process for all, peaks not per method
    assert "| SSPrompt / CoOp training memory | n/a (one shared process) |" in shared
    assert "| SSPrompt / CoOp training time | 0.64 |" in shared


def test_methods_table_rows_cells_and_errors():
    text = methods_table(ROWS, tiny=False)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "| 32.0 | 10.0 | 465 | 5,267 | 56.0 ms/image, 3.82 GB" in lines["ssprompt"]
    assert "n/a (training-free)" in lines["persam"] and "(fit 1000 it: 2.50 s)" in lines["persam_f"]
    assert "| ERROR | ERROR | ERROR |" in lines["ovsam"] and "CUDA out of memory" in lines["ovsam"]
    assert "SAM ViT-B + BERT-base" in lines["dit_layerwise"]
    assert "sam_tiny + tiny BERT" in methods_table(ROWS[2:3], tiny=True)


def test_arguments():
    args = parse_args(["--device", "cpu", "--tiny", "--sections", "env,methods", "--methods", "persam"])
    assert args.sections == ["env", "methods"] and args.methods == ["persam"]
    assert (args.steps, args.repeats, args.train_steps) == (1, 1, 6)
    assert (parse_args(["--device", "cpu"]).steps, parse_args(["--device", "cpu"]).train_steps) == (5, 10)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--sections", "env,nccl"])
