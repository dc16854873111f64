"""DDP on CPU (gloo) through torchrun (one node, or two "nodes" on this machine meeting through
a c10d rendezvous) and as the tasks of a faked Slurm job: same parameters and same evaluation
as 1 process."""

from __future__ import annotations

import pytest

import json

import torch
from sambench.testing import REPO, TINY_SAM, run_tool, run_tool_as_slurm_tasks, run_tool_on_nodes, scores

from sambench.backbones.sam import SamBackbone

pytestmark = pytest.mark.distributed

# torchrun sets OMP_NUM_THREADS=1 in every rank; CPU kernels with another thread count sum in
# another order (~1e-8), so the 1-process references run with one thread too: exact comparisons.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
COMMON = [
    "dataset=sample", "dataset.num_images=5", "backbone=sam_tiny", "trainer.device=cpu",
    "trainer.max_steps=3", "trainer.optim.lr=1e-3",
]


def trainable(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainable"]


SGD = ["trainer.optim.name=sgd", "trainer.optim.lr=0.05"]


@pytest.fixture(scope="module")
def one_rank_training(tmp_path_factory):
    """Global batch 2 on 1 rank (the reference of the multi-rank trainings)."""
    run_dir = tmp_path_factory.mktemp("train1") / "run"
    one = run_tool("tools/train.py", *COMMON, *SGD, "trainer.batch_size=2", f"hydra.run.dir={run_dir}", env=ONE_THREAD)
    assert one.returncode == 0, one.stderr[-3000:]
    return run_dir


def assert_same_training(one, many) -> None:
    """Parameters within 1e-6 and one run folder written once (only rank 0 writes)."""
    a, b = trainable(one), trainable(many)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    init = {f"sam.{k}": v for k, v in SamBackbone(**TINY_SAM).state_dict().items()}
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-4  # training really moved them
    assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len((many / "log.jsonl").read_text().splitlines()) == len((one / "log.jsonl").read_text().splitlines())


def test_two_nodes_match_one_rank(tmp_path, one_rank_training):
    """torchrun --nnodes=2 --rdzv-backend=c10d: two agents, one process each, as on two machines."""
    nodes = run_tool_on_nodes("tools/train.py", *COMMON, *SGD, "trainer.batch_size=1", f"hydra.run.dir={tmp_path / 'two'}")
    assert all(n.returncode == 0 for n in nodes), "".join(n.stderr[-3000:] for n in nodes)
    assert_same_training(one_rank_training, tmp_path / "two")
    assert json.loads((tmp_path / "two" / "env.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def one_rank_evaluation(tmp_path_factory, trained_run):
    """tools/eval.py of the trained run on 5 images, 1 process: the multi-rank references."""
    run_dir = tmp_path_factory.mktemp("eval1") / "run"
    one = run_tool("tools/eval.py", *COMMON, f"ckpt={trained_run}", f"hydra.run.dir={run_dir}", env=ONE_THREAD)
    assert one.returncode == 0, one.stderr[-3000:]
    metrics = scores(run_dir)
    assert metrics["num_images"] == 5 and metrics["mIoU"] > 0
    return metrics


def test_two_rank_evaluation_equals_one_rank_on_odd_dataset(tmp_path, trained_run, one_rank_evaluation):
    """5 eval images over 2 ranks: the sampler pads one; metrics must be identical anyway."""
    two = run_tool("tools/eval.py", *COMMON, f"ckpt={trained_run}", f"hydra.run.dir={tmp_path / 'eval2'}", torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert scores(tmp_path / "eval2") == one_rank_evaluation


def test_two_node_evaluation_equals_one_rank(tmp_path, trained_run, one_rank_evaluation):
    nodes = run_tool_on_nodes("tools/eval.py", *COMMON, f"ckpt={trained_run}", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert all(n.returncode == 0 for n in nodes), "".join(n.stderr[-3000:] for n in nodes)
    assert scores(tmp_path / "eval2") == one_rank_evaluation


def test_faked_slurm_tasks_take_their_ranks_from_the_job_environment(tmp_path, trained_run, one_rank_evaluation):
    """Two processes started as the tasks of a submitit Slurm job (SLURM_PROCID 0 and 1, no
    torchrun): they form one 2-rank group from that environment and evaluate as 1 process does."""
    tasks = run_tool_as_slurm_tasks("tools/eval.py", *COMMON, f"ckpt={trained_run}",
                                    f"hydra.run.dir={tmp_path / 'eval2'}", env=ONE_THREAD)
    assert all(t.returncode == 0 for t in tasks), "".join(t.stderr[-3000:] for t in tasks)
    assert json.loads((tmp_path / "eval2" / "env.json").read_text())["world_size"] == 2
    assert "submitit slurm job 777: 2 tasks, ranks from its job environment (master localhost:" in tasks[0].stderr
    assert scores(tmp_path / "eval2") == one_rank_evaluation


def test_two_ranks_match_one_rank_in_one_default_run_folder(tmp_path, one_rank_training):
    """Global batch 2: 1 rank x 2 samples vs 2 ranks x 1 sample, crossing an epoch boundary, in
    the default run folder (the stamp is rank 0's, broadcast: one folder for both ranks).

    SGD keeps the comparison tight: its update is linear in the gradient, whereas Adam divides
    by sqrt(v) and turns float-rounding noise of near-zero gradients into visible differences.
    """
    two = run_tool("tools/train.py", *COMMON, *SGD, "trainer.batch_size=1", cwd=tmp_path, torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "sam_prompted" / "sample").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
    assert_same_training(one_rank_training, runs[0])


def test_multirun_under_torchrun_is_refused(tmp_path):
    result = run_tool("tools/train.py", "--multirun", "trainer.seed=0,1", cwd=tmp_path, torchrun=1)
    assert result.returncode != 0
    assert "--multirun cannot run under torchrun" in result.stderr
    assert str(REPO / "sambench") not in result.stderr  # torchrun reports the exit; no sambench trace


def test_two_rank_referring_evaluation_gathers_global_oiou(tmp_path):
    """DIT on a generated RefCOCO copy, 7 expressions over 2 ranks (one padded): oIoU is the global
    ΣI/ΣU, so the 2-rank numbers equal the 1-rank ones exactly (a mean of per-rank values would not)."""
    from sambench.testing.refcoco_synthetic import write_synthetic_refcoco

    root = write_synthetic_refcoco(tmp_path / "refer", num_images=12)
    common = ["method=dit_layerwise", f"dataset.root={root}", "dataset.max_samples=7", "trainer.device=cpu",
              "trainer.batch_size=2", "trainer.eval.batch_size=2"]
    train = run_tool("tools/train.py", *common, "trainer.max_steps=3", "trainer.optim.lr=1e-3", f"hydra.run.dir={tmp_path / 'run'}")
    assert train.returncode == 0, train.stderr[-3000:]
    args = ["tools/eval.py", *common, f"ckpt={tmp_path / 'run'}"]
    one = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval1'}", env=ONE_THREAD)
    two = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval2'}", torchrun=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    m1, m2 = scores(tmp_path / "eval1"), scores(tmp_path / "eval2")
    assert m1["num_samples"] == 7 and m1["oIoU"] > 0
    assert m1 == m2


def test_two_rank_semantic_evaluation_equals_one_rank(tmp_path):
    """3 validation images over 2 ranks (the sampler repeats one): the all-reduced confusion
    matrix counts each image once, so the 2-rank metrics equal the 1-rank ones."""
    from sambench.testing.semantic_synthetic import write_synthetic_cityscapes

    root = write_synthetic_cityscapes(tmp_path / "cityscapes", train_images=2, val_images=3)
    args = ["tools/eval.py", "method=zero_shot_prompts", f"dataset.root={root}", "method.grid=2",
            "trainer.device=cpu", "trainer.eval.batch_size=1"]
    one = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval1'}", env=ONE_THREAD)
    two = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval2'}", torchrun=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    m1, m2 = scores(tmp_path / "eval1"), scores(tmp_path / "eval2")
    import numpy as np
    from PIL import Image

    labelled = sum(int((np.array(Image.open(p)) != 255).sum()) for p in (root / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    assert m1["num_pixels"] == labelled  # every image counted exactly once
    assert m1 == m2


def test_two_rank_sam3_detections_equal_one_rank(tmp_path):
    """SAM 3 zero-shot, detector-free on a generated LVIS copy (4 images, 2 ranks): every rank's
    detections reach detections.json once, so the file and the metrics equal the 1-rank run."""
    from sambench.testing.lvis_synthetic import write_synthetic_lvis

    root = write_synthetic_lvis(tmp_path / "lvis")
    args = ["tools/eval.py", "method=sam3", "backbone=sam3_tiny", "dataset=lvis", f"dataset.root={root}",
            "method.protocol=detector_free", "method.max_detections=5", "trainer.device=cpu", "trainer.eval.batch_size=1"]
    one = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval1'}", env=ONE_THREAD)
    two = run_tool(*args, f"hydra.run.dir={tmp_path / 'eval2'}", torchrun=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    m1, m2 = scores(tmp_path / "eval1"), scores(tmp_path / "eval2")
    assert m1["num_images"] == 4 and m1["num_detections"] == 4 * 5
    assert m1 == m2

    def detections(run):
        entries = json.loads((tmp_path / run / "detections.json").read_text())
        return sorted((d["image_id"], d["category_id"], round(d["score"], 6), d["segmentation"]["counts"]) for d in entries)

    assert detections("eval1") == detections("eval2")


def test_two_ranks_train_lora_as_one_rank(tmp_path):
    """method.peft=lora under DDP: the adapter tensors (the only ones that train) all-reduce like
    any parameter: 2 ranks x 1 sample end where 1 rank x 2 samples ends."""
    lora = ["method/peft=lora", "method.finetune=none", *SGD]
    one = run_tool("tools/train.py", *COMMON, *lora, "trainer.batch_size=2", f"hydra.run.dir={tmp_path / 'one'}",
                   env=ONE_THREAD)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_tool("tools/train.py", *COMMON, *lora, "trainer.batch_size=1", f"hydra.run.dir={tmp_path / 'two'}",
                   torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = trainable(tmp_path / "one"), trainable(tmp_path / "two")
    assert a.keys() == b.keys() and all(".lora_" in k for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max(a[k].abs().max().item() for k in a if ".lora_B." in k) > 1e-5  # B left zero: training moved it


def test_two_rank_one_shot_and_video_evaluations_equal_one_rank(tmp_path):
    """PerSAM on 5 COCO-20i episodes and on 3 DAVIS sequences, over 2 ranks (the sampler repeats one
    item): per-class IoU, FB-IoU and the per-object J / F are gathered by index, so the numbers equal
    the 1-rank run exactly."""
    from sambench.testing.davis_synthetic import write_davis
    from sambench.testing.oneshot_synthetic import write_synthetic_coco20i

    coco = write_synthetic_coco20i(tmp_path / "COCO2014")
    davis = write_davis(tmp_path / "DAVIS", {"a-syn": (3, 32, 40, 1), "b-syn": (4, 36, 44, 2), "c-syn": (3, 30, 38, 2)})
    for name, data in (("coco", ["dataset=coco20i", f"dataset.root={coco}", "dataset.episodes=5"]),
                       ("davis", ["dataset=davis2017", f"dataset.root={davis}"])):
        args = ["tools/eval.py", "method=persam", "backbone=sam_tiny", "trainer.device=cpu", *data]
        one = run_tool(*args, f"hydra.run.dir={tmp_path / name / 'one'}", env=ONE_THREAD)
        two = run_tool(*args, f"hydra.run.dir={tmp_path / name / 'two'}", torchrun=2)
        assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
        m1, m2 = scores(tmp_path / name / "one"), scores(tmp_path / name / "two")
        assert m1 == m2
        assert m1.get("num_images", m1.get("num_sequences")) == (5 if name == "coco" else 3)
