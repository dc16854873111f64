"""Resume is exact for a method that augments with torch's global RNG (DIT: random expression,
long side, colour jitter, flip; dropout): a run that dies mid-epoch and resumes equals the
uninterrupted run tensor for tensor (parameters, EMA, optimizer state and the RNG itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.checkpoint import LAST, load_checkpoint
from sambench.cli.build_training import build_trainer
from sambench.engine.hooks import Hook
from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench.engine.loop import Trainer
from sambench.evaluation.referring import ReferringEvaluator
from sambench.logging import RunLogger
from sambench.registry import DATASETS, METHODS, load_plugins

load_plugins()
STEPS = 7  # 8 training refs, batch 2: 4 steps per epoch, so the run crosses an epoch boundary


class Killed(RuntimeError):
    pass


class KillAt(Hook):
    """Dies right after optimizer step ``step``, before that step's checkpoint is written."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, losses) -> None:
        if trainer.step == self.step:
            raise Killed(f"killed at step {trainer.step}")


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory) -> Path:
    return write_synthetic_refcoco(tmp_path_factory.mktemp("refer"), num_images=12, seed=3, image_size=(48, 64))


def dit_trainer(run_dir: Path, root: Path, every: int | None = None, hooks: tuple[Hook, ...] = ()) -> Trainer:
    """DIT's recipe; ``every``: log and checkpoint every N steps (else only at the end);
    ``hooks`` run before the checkpoint hook."""
    torch.manual_seed(123456)  # tools/train.py seeds before building, as here
    sam = SamBackbone(**TINY_SAM)
    method = METHODS.get("dit_layerwise")(sam=sam, text_encoder={"allow_random_init": True}, image_size=128,
                                          augment={"min_side": 64})
    train_set = DATASETS.get("refcoco")(split="train", root=str(root), max_samples=8)
    assert len(train_set) == 8
    return build_trainer(
        method=method, train_set=train_set, eval_set=None, evaluator=ReferringEvaluator(), run_dir=run_dir,
        device=torch.device("cpu"), run_logger=RunLogger(log_every=every or 10), max_steps=STEPS, batch_size=2,
        optim={"name": "adam", "lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-9}, grad_clip=0.15,
        ema={"decay": 0.9997, "warmup": True},
        schedule={"name": "cosine", "warmup_steps": 2, "warmup_start": 0.001, "min_ratio": 0.01},
        eval={"at_end": False}, checkpoint={"every": every}, seed=123456, hooks=list(hooks),
    )


def state_of(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / LAST)


def test_dit_killed_mid_epoch_resumes_tensor_for_tensor(tmp_path, refer_root):
    straight = dit_trainer(tmp_path / "straight", refer_root)
    straight.fit()
    with pytest.raises(Killed):
        dit_trainer(tmp_path / "killed", refer_root, every=1, hooks=(KillAt(3),)).fit()
    assert state_of(tmp_path / "killed")["step"] == 2  # step 3's work is lost, as in a real kill
    resumed = dit_trainer(tmp_path / "killed", refer_root, every=1)
    resumed.fit()
    assert resumed.step == STEPS
    a, b = state_of(tmp_path / "straight"), state_of(tmp_path / "killed")
    assert a["trainable"].keys() == b["trainable"].keys() and len(a["trainable"]) > 50
    differing = [n for n in a["trainable"] if not torch.equal(a["trainable"][n], b["trainable"][n])]
    assert differing == []
    assert all(torch.equal(a["ema"]["shadow"][n], b["ema"]["shadow"][n]) for n in a["ema"]["shadow"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    untrained = dit_trainer(tmp_path / "fresh", refer_root)
    assert any(not torch.equal(a["trainable"][n], p.detach()) for n, p in untrained.params.items())
