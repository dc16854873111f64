"""tools/summarize.py: run folders -> Markdown leaderboard, CSV and chart, mean ± std over seeds."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
import yaml

from sambench import REPO_ROOT
from sambench.cli.summarize import main

A_MIOU, A_OIOU = [61.234, 65.5], [70.1, 71.95]
B_MIOU, B_OIOU = 50.0, 55.555


def make_run(folder, *, method, dataset, seed, metrics, backbone="vit_b"):
    folder.mkdir(parents=True)
    config = {
        "method": {"name": method, "lr": 0.001},
        "dataset": {"name": dataset},
        "backbone": {"name": backbone},
        "trainer": {"seed": seed},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def outputs(tmp_path):
    """outputs/ with 2 seeds of a on x, 1 of b on x, one broken run, and folders that are no runs."""
    root = tmp_path / "outputs"
    runs = [
        make_run(root / "a_x" / "seed0", method="a", dataset="x", seed=0,
                 metrics={"mIoU": A_MIOU[0], "oIoU": A_OIOU[0], "per_class": {"cat": 1.0}}),
        make_run(root / "a_x" / "seed1", method="a", dataset="x", seed=1,
                 metrics={"mIoU": A_MIOU[1], "oIoU": A_OIOU[1], "per_class": {"cat": 2.0}}),
        make_run(root / "b_x" / "seed0", method="b", dataset="x", seed=0,
                 metrics={"mIoU": B_MIOU, "oIoU": B_OIOU}),
    ]
    broken = make_run(root / "broken", method="c", dataset="x", seed=0, metrics={})
    (broken / "metrics.json").write_text("{not json")
    # Hydra's own copy and a wandb folder inside a run must not be taken for runs.
    (runs[0] / ".hydra").mkdir()
    (runs[0] / ".hydra" / "config.yaml").write_text("method: {name: hidden}\n")
    (runs[0] / "wandb" / "offline-run-1" / "files").mkdir(parents=True)
    (runs[0] / "wandb" / "offline-run-1" / "files" / "config.yaml").write_text("x: 1\n")
    return root, runs, broken


def table_rows(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def expected_cell(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_table_shows_mean_and_sample_std_over_seeds(outputs, tmp_path, capsys):
    root, runs, broken = outputs
    code = main([*map(str, runs), str(broken), "--csv", str(tmp_path / "s.csv")])
    out, err = capsys.readouterr()
    assert code == 0
    rows = table_rows(out)
    assert [(r["method"], r["dataset"], r["backbone"], r["n"]) for r in rows] == [
        ("a", "x", "vit_b", "2"), ("b", "x", "vit_b", "1")]
    assert rows[0]["mIoU"] == expected_cell(A_MIOU) == "63.37 ± 3.02"
    assert rows[0]["oIoU"] == expected_cell(A_OIOU)
    assert rows[1]["mIoU"] == "50.00" and rows[1]["oIoU"] == f"{B_OIOU:.2f}"
    assert "per_class" not in rows[0]
    assert f"{broken}: unusable metrics.json" in err
    assert len([line for line in err.splitlines() if "broken" in line]) == 1


def test_csv_has_means_and_stds_at_full_precision(outputs, tmp_path, capsys):
    root, runs, _ = outputs
    csv_path = tmp_path / "out" / "leaderboard.csv"
    assert main([str(root), "--csv", str(csv_path)]) == 0
    with csv_path.open() as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == ["method", "dataset", "backbone", "n",
                                     "mIoU_mean", "mIoU_std", "oIoU_mean", "oIoU_std"]
        a_row, b_row = list(reader)
    assert (a_row["method"], a_row["n"], b_row["method"], b_row["n"]) == ("a", "2", "b", "1")
    assert float(a_row["mIoU_mean"]) == pytest.approx(statistics.mean(A_MIOU))
    assert float(a_row["mIoU_std"]) == pytest.approx(statistics.stdev(A_MIOU))
    assert float(a_row["oIoU_std"]) == pytest.approx(statistics.stdev(A_OIOU))
    assert float(b_row["oIoU_mean"]) == B_OIOU and b_row["oIoU_std"] == ""


def test_folder_of_runs_is_expanded_recursively(outputs, tmp_path, capsys):
    root, runs, broken = outputs
    assert main([str(root), "--csv", str(tmp_path / "a.csv")]) == 0
    expanded = capsys.readouterr()
    assert main([*map(str, runs), "--csv", str(tmp_path / "b.csv")]) == 0
    explicit = capsys.readouterr()
    assert expanded.out == explicit.out
    assert "hidden" not in expanded.out and "offline-run" not in expanded.err
    assert f"{broken}: unusable metrics.json" in expanded.err


def test_metric_selection_and_chart(outputs, tmp_path, capsys):
    root, _, _ = outputs
    chart = tmp_path / "chart.png"
    code = main([str(root), "--metrics", "oIoU,nope", "--csv", str(tmp_path / "s.csv"),
                 "--chart", str(chart)])
    out, err = capsys.readouterr()
    assert code == 0
    assert list(table_rows(out)[0]) == ["method", "dataset", "backbone", "n", "oIoU", "nope"]
    assert table_rows(out)[0]["nope"] == "-"
    assert "metric 'nope' is in no metrics.json" in err
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_defaults_to_the_current_folder(outputs, tmp_path, monkeypatch, capsys):
    root, _, _ = outputs
    monkeypatch.chdir(tmp_path)
    assert main([str(root)]) == 0
    assert (tmp_path / "summary.csv").is_file()


def test_missing_config_is_warned_and_skipped(outputs, tmp_path, capsys):
    _, runs, _ = outputs
    (runs[2] / "config.yaml").unlink()
    assert main([str(runs[2]), str(runs[0]), "--csv", str(tmp_path / "s.csv")]) == 0
    out, err = capsys.readouterr()
    assert f"{runs[2]}: unusable config.yaml (file missing); skipped" in err
    assert [r["method"] for r in table_rows(out)] == ["a"]


def test_nothing_usable_exits_2(outputs, tmp_path, capsys):
    _, _, broken = outputs
    (tmp_path / "empty").mkdir()
    assert main([str(broken), str(tmp_path / "empty"), str(tmp_path / "missing"),
                 "--csv", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "error: no usable run folders" in err
    assert "empty: no metrics.json and no run folders below it" in err
    assert "missing: not a folder" in err
    assert not (tmp_path / "s.csv").exists()


def test_tools_script_runs_the_cli(outputs, tmp_path):
    root, _, _ = outputs
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "summarize.py"), str(root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "| a | x | vit_b | 2 |" in result.stdout
    assert (tmp_path / "summary.csv").is_file()


def test_bookkeeping_numbers_are_left_out_unless_asked(tmp_path, capsys):
    run = make_run(tmp_path / "r", method="a", dataset="x", seed=0,
                   metrics={"mIoU": 1.0, "step": 30, "num_images": 8})
    assert main([str(run), "--csv", str(tmp_path / "s.csv")]) == 0
    assert list(table_rows(capsys.readouterr().out)[0]) == ["method", "dataset", "backbone", "n", "mIoU"]
    assert main([str(run), "--csv", str(tmp_path / "s.csv"), "--metrics", "mIoU,step"]) == 0
    assert table_rows(capsys.readouterr().out)[0]["step"] == "30.00"


def test_several_backbones_add_a_method_by_backbone_table_per_dataset(tmp_path, capsys):
    root = tmp_path / "outputs"
    make_run(root / "1", method="persam", dataset="perseg", seed=0, metrics={"mIoU": 80.0, "bIoU": 1.0}, backbone="sam_tiny")
    make_run(root / "2", method="persam", dataset="perseg", seed=1, metrics={"mIoU": 82.0, "bIoU": 1.0}, backbone="sam_tiny")
    make_run(root / "3", method="persam", dataset="perseg", seed=0, metrics={"mIoU": 70.0}, backbone="sam2_tiny")
    make_run(root / "4", method="sam_prompted", dataset="perseg", seed=0, metrics={"mIoU": 60.0}, backbone="sam2_tiny")
    make_run(root / "5", method="ssprompt", dataset="ade20k", seed=0, metrics={"mIoU_s": 5.0}, backbone="sam_tiny")
    assert main([str(root), "--csv", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    ade, perseg = out.split("ade20k: mIoU_s")[1].split("perseg: mIoU")
    rows = table_rows(perseg)
    assert rows == [{"method": "persam", "sam2_tiny": "70.00", "sam_tiny": "81.00 ± 1.41"},
                    {"method": "sam_prompted", "sam2_tiny": "60.00", "sam_tiny": "-"}]
    assert table_rows(ade) == [{"method": "ssprompt", "sam_tiny": "5.00"}]
    # one backbone: no pivot unless asked for
    assert main([str(root / "1"), str(root / "2"), "--csv", str(tmp_path / "t.csv")]) == 0
    assert ": mIoU" not in capsys.readouterr().out
    assert main([str(root / "1"), "--pivot", "bIoU", "--csv", str(tmp_path / "u.csv")]) == 0
    assert table_rows(capsys.readouterr().out.split("perseg: bIoU")[1]) == [{"method": "persam", "sam_tiny": "1.00"}]


def test_folds_are_separate_rows_not_seeds(tmp_path, capsys):
    for fold, miou in ((0, 20.0), (1, 30.0)):
        run = make_run(tmp_path / "runs" / f"f{fold}", method="persam", dataset="coco20i", seed=0, metrics={"mIoU": miou})
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["dataset"]["fold"] = fold
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main([str(tmp_path / "runs"), "--csv", str(tmp_path / "s.csv")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [(r["dataset"], r["n"], r["mIoU"]) for r in rows] == [("coco20i/fold0", "1", "20.00"), ("coco20i/fold1", "1", "30.00")]
