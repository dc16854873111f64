"""Where this process sits in a cluster job, and what to do when the job is told to stop.

A job started by Hydra's submitit launcher (``hydra/launcher=submitit_slurm`` or
``submitit_local``) runs one process per task and no torchrun: each task's rank, local rank,
world size and master address come from submitit's job environment (Slurm's ``SLURM_*``
variables or the local executor's) and are exported as the ``env://`` variables torch reads
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). On Slurm the master
is the first host of the job's node list and the port is derived from the job id (the same on
every task; ``MASTER_PORT`` in the environment wins); the local executor uses 127.0.0.1.

Preemption (:mod:`sambench.engine.preemption` saves the checkpoint): under submitit, the
pre-timeout signal is handed to submitit's own handler, which (on task 0) pickles the launcher
call again and requeues the job (``scontrol requeue`` on Slurm; the local executor restarts its
tasks); the requeued job lands in the same run folder and resumes from its ``last.pt``.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """One task of a submitit job: ``executor`` (slurm | local), global ``rank`` of
    ``world_size`` tasks, ``local_rank`` of ``local_world_size`` on its node, the rendezvous
    ``master_addr``/``master_port`` and the job id."""

    executor: str
    job_id: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    def variables(self) -> dict[str, str]:
        """The ``env://`` variables of this task (plus the local ones torchrun also sets)."""
        return {"MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port), "RANK": str(self.rank),
                "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size)}


def in_submitit_job() -> bool:
    """True inside a task started by submitit (its executors set ``SUBMITIT_EXECUTOR``)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def submitit_placement() -> Placement | None:
    """This task's :class:`Placement` from submitit's job environment; None outside a submitit job."""
    if not in_submitit_job():
        return None
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()  # reads SLURM_* / SUBMITIT_LOCAL_*; the port is seeded by the job id
    executor = os.environ["SUBMITIT_EXECUTOR"]
    master = env.master_addr if executor != "local" else "127.0.0.1"  # one machine: no host name lookup
    return Placement(executor=executor, job_id=str(JobEnvironment().job_id), rank=env.rank, world_size=env.world_size,
                     local_rank=env.local_rank, local_world_size=env.local_world_size, master_addr=master,
                     master_port=env.master_port)


def export_placement(placement: Placement) -> None:
    """Set the ``env://`` variables of ``placement`` in this process (replacing any inherited ones)."""
    os.environ.update(placement.variables())


def preempt_signal() -> int | None:
    """The signal submitit's requeue handler is bound to in this task (USR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise); None outside a submitit job."""
    if not in_submitit_job():
        return None
    from submitit import JobEnvironment

    return int(JobEnvironment._usr_sig())


def hand_over(signum: int) -> bool:
    """After the preemption checkpoint: under submitit and for a signal other than SIGTERM, call
    submitit's own handler, which on task 0 dumps the launcher call again, requeues the job and
    exits the process (other tasks return). Returns False when nothing was handed over (not a
    submitit job, SIGTERM (Slurm cancels or preempts the job itself: it is not requeued from
    here), or no submitit handler in place)."""
    ours = preempt_signal()
    if ours is None or signum == signal.SIGTERM:
        return False
    handler = signal.getsignal(ours)
    if not callable(handler):  # SIG_DFL / SIG_IGN
        log.warning("no submitit handler for %s in this task: not requeued", signal.Signals(ours).name)
        return False
    handler(ours, None)  # task 0: requeue and exit; other tasks: returns
    return True
