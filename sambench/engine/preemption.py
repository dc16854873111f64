"""Stop at a step boundary when the scheduler says the job must end, with a checkpoint.

Slurm sends a signal before a job's time limit (``--signal``; submitit asks for SIGUSR2,
``signal_delay_s`` before it) and SIGTERM when it cancels or preempts the job. The
:class:`PreemptionHook` notes such a signal (the handler only records it: the step in flight
finishes), and after each optimizer step every rank agrees on whether any rank got one (a max
over ranks, so all stop at the same step even when the signal reaches them at different
times). Then the checkpoint hook saves ``last.pt`` and the trainer raises :class:`Preempted`;
the job's launcher requeues the run (:func:`sambench.cluster.hand_over`), which resumes from
that checkpoint exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

from sambench import dist
from sambench.engine.hooks import Hook
from sambench.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_SIGNALS = ("USR1", "USR2", "TERM")


class Preempted(Exception):
    """The run stopped after step ``step`` on signal ``signum``; its checkpoint is saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step} (checkpoint saved)")
        self.signum, self.step = signum, step


def signal_numbers(names) -> list[int]:
    """``["USR1", "SIGTERM"]`` -> signal numbers; a name that is no catchable signal is refused."""
    numbers = []
    for name in names:
        text = str(name).upper()
        found = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
        if not isinstance(found, signal.Signals) or found in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"trainer.preemption.signals: {name!r} is not a signal that can be caught "
                              f"(e.g. {', '.join(DEFAULT_SIGNALS)})")
        numbers.append(int(found))
    return numbers


class PreemptionHook(Hook):
    """On one of ``signals`` (names such as ``USR1``; None: :data:`DEFAULT_SIGNALS`; ``[]``:
    none), stop after the current optimizer step:
    sets ``trainer.stop_signal`` on every rank, which makes the checkpoint hook save and the
    trainer raise :class:`Preempted`. The previous handlers (e.g. submitit's) are restored when
    the run ends or stops. Signals can only be caught in the main thread: elsewhere the hook
    does nothing (one warning)."""

    def __init__(self, *, signals: list[str] | None = None):
        self.signums = signal_numbers(DEFAULT_SIGNALS if signals is None else signals)
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def _note(self, signum, frame) -> None:  # a signal handler: record only (no logging, no I/O)
        if self.received is None:
            self.received = signum

    def before_run(self, trainer) -> None:
        if not self.signums:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: preemption signals are not caught in this run")
            return
        for signum in self.signums:
            self.previous[signum] = signal.signal(signum, self._note)

    def after_step(self, trainer, losses) -> None:
        if not self.previous:
            return
        signum = agreed_signal(self.received or 0)
        if signum:
            self.restore()
            trainer.stop_signal = signum
            got = signal.Signals(self.received).name if self.received else "none (another rank got it)"
            log.warning("preemption: %s received (here: %s); saving the checkpoint after step %d and stopping",
                        signal.Signals(signum).name, got, trainer.step)

    def after_run(self, trainer) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the handlers back that were in place before the run."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def agreed_signal(local: int) -> int:
    """The largest signal number any rank has received (0: none); one tiny all-reduce per step."""
    if not dist.is_distributed():
        return local
    flag = torch.tensor([local], dtype=torch.int64, device=dist.collective_device())
    with dist.waiting("the preemption check after the step"):
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
