"""Hooks that stand in for a scheduler in tests of preemption (``trainer.hooks=[{_target_: ...}]``)."""

from __future__ import annotations

import os
import signal as signals
import time
from pathlib import Path

from sambench import dist
from sambench.engine.hooks import Hook


def _preemption_hook(trainer):
    from sambench.engine.preemption import PreemptionHook

    return next(h for h in trainer.hooks if isinstance(h, PreemptionHook))


class SignalAtStep(Hook):
    """After optimizer step ``step``, send ``signal`` (a name such as ``USR1``) to this process
    on the ranks in ``ranks`` (None: every rank), as Slurm would; refuses to when nothing
    catches it (the default action would kill the process, e.g. the test runner)."""

    def __init__(self, *, step: int, signal: str = "USR1", ranks: list[int] | None = None):
        self.step, self.signum, self.ranks = step, int(getattr(signals, f"SIG{signal.upper()}")), ranks

    def after_step(self, trainer, losses) -> None:
        if trainer.step != self.step or (self.ranks is not None and dist.rank() not in self.ranks):
            return
        if signals.getsignal(self.signum) in (signals.SIG_DFL, None):
            raise AssertionError(f"nothing catches {signals.Signals(self.signum).name}: the preemption hook is off")
        os.kill(os.getpid(), self.signum)



class WaitForSignalAtStep(Hook):
    """After optimizer step ``step`` of a run that has not been preempted yet: write this
    rank's pid to ``<folder>/rank<r>.pid`` and wait, up to ``timeout_s``, until this process
    received a preemption signal (then it writes ``<folder>/rank<r>.signalled``) or
    ``<folder>/go`` exists. A test sends the signal to some ranks from outside (as a scheduler
    does), waits for their ``.signalled`` files, then creates ``go`` for the others."""

    def __init__(self, *, step: int, folder: str, timeout_s: float = 600.0):
        self.step, self.folder, self.timeout_s = step, Path(folder), timeout_s

    def after_step(self, trainer, losses) -> None:
        go = self.folder / "go"
        if trainer.step != self.step or go.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        pid_file = self.folder / f"rank{dist.rank()}.pid"
        pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
        pid_file.with_suffix(".tmp").replace(pid_file)
        watched, deadline = _preemption_hook(trainer), time.monotonic() + self.timeout_s
        while watched.received is None and not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if watched.received is not None:
            (self.folder / f"rank{dist.rank()}.signalled").touch()
