"""tools/gpu_check.py on CPU with the tiny presets (gloo, 2 processes): every section's table,
PASS where checks are judged, numbers and the papers' figures in every method row, --out = stdout."""

from __future__ import annotations

import re

import pytest
from sambench.testing import run_tool

from sambench.cli.gpu_check_methods import PAPER, WORKERS

pytestmark = pytest.mark.slow
TITLES = ["## 1. Environment", "## 2. Collectives", "## 3. 1 vs N processes: evaluation equality",
          "## 4. Mixed precision (embedded default)", "## 5. Methods at the papers' sizes, random weights",
          "## 6. PEFT: full fine-tuning vs LoRA vs frozen encoder (sam_prompted)"]
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "check.md"
    result = run_tool("tools/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out))
    return result, out


def rows(stdout: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith(f"| {first_cell}")]


def section(stdout: str, title: str) -> str:
    start = stdout.index(title)
    following = [stdout.index(t) for t in TITLES if stdout.index(t) > start]
    return stdout[start:min(following, default=len(stdout))]


def test_exit_status_and_every_section(check):
    result, _ = check
    assert result.returncode == 0, result.stderr[-3000:]
    for title in TITLES:
        assert title in result.stdout
    assert "Result: PASS" in result.stdout
    assert "[gpu-check]" in result.stderr and "[gpu-check]" not in result.stdout  # progress on stderr only


def test_collectives_pass_on_two_gloo_ranks(check):
    text = section(check[0].stdout, TITLES[1])
    for name in ("all_reduce (sum, exact value)", "all_gather_object", "broadcast_object_list", "barrier"):
        assert rows(text, name)[0][1:4] == ["2", "gloo", "PASS"], text
    assert "GB/s" in text


def test_one_vs_two_process_evaluation_is_equal(check):
    text = section(check[0].stdout, TITLES[2])
    assert rows(text, "metrics.json equal")[0][-1].startswith("PASS"), text
    one, two = rows(text, "tools/eval.py")
    assert (one[1], two[1]) == ("1", "2") and one[2] == two[2] and float(one[2]) > 0  # a trained model, not all-empty masks


def test_precision_rows(check):
    text = section(check[0].stdout, TITLES[3])
    for precision in ("fp32", "bf16"):
        row = rows(text, precision)[0]
        assert row[3] == "PASS" and NUMBER.match(row[1]) and NUMBER.match(row[2]), text
    assert rows(text, "fp16")[0][3] == "n/a on CPU"


def test_every_method_row_has_numbers_and_its_paper_figure(check):
    text = section(check[0].stdout, TITLES[4])
    for worker, (names, _, _) in WORKERS.items():
        for name in names:
            row = rows(text, f"{name} ")[0]
            train, infer, memory, paper = row[2], row[3], row[4], row[6]
            assert NUMBER.match(infer) and NUMBER.match(memory), row
            assert NUMBER.match(train.split()[0]) or train == "n/a (training-free)", row
            assert paper == PAPER[name]
    for comparison in ("L-DIT / SAM-text inference time", "SSPrompt / CoOp training time", "OV-SAM images/s"):
        assert NUMBER.match(rows(text, comparison)[0][1]), comparison
    # --tiny measures every method in one process: peaks are not per method, so no memory ratio
    assert rows(text, "SSPrompt / CoOp training memory")[0][1] == "n/a (one shared process)"


def test_peft_cost_rows(check):
    text = section(check[0].stdout, TITLES[5])
    full, lora, frozen = (rows(text, label)[0] for label in ("full fine-tuning", "LoRA r=8", "frozen encoder"))
    assert full[2] == "1.000" and full[4] == "1.000", text  # ratios to full fine-tuning
    for row in (lora, frozen):
        assert 0 < float(row[2]) < 1 and NUMBER.match(row[3]) and NUMBER.match(row[5]), row  # fewer trainable params


def test_out_file_equals_stdout(check):
    result, out = check
    assert out.read_text().strip() == result.stdout.strip()
