"""Training processes started by a launcher outside this project, each running the whole command: a SLURM job's tasks
(srun) or torchrun's workers. Lightning's own DDP launch hands the processes it starts its run folder and drawn seeds;
these start independently, so they must be given their shared run folder and seeds, and be as many as the trainer's
processes (else each trains a model of its own into the same folder, or fewer train without a word)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launcher:
    name: str           # as the messages name it
    by: str             # who starts the processes
    unit: str           # what it counts
    processes: str      # as its environment gives them (unchecked text)
    runs_as: str        # what each process is to it, in "runs the command in <processes> <runs_as>"
    per_node: str       # "" where it does not say
    processes_variable: str
    per_node_variable: str
    ask_for: str        # how to ask it for other counts
    job_folder: str     # a folder that differs between its jobs, for the advice
    started_again: str  # who continues in the folder given


def external_launcher() -> Launcher | None:
    from src.utils.slurm import in_slurm_job

    # torchrun first, as Lightning takes it: it is often started by a SLURM job's one task per node.
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return Launcher(
            name="torchrun launch", by="torchrun", unit="process(es)", runs_as="processes",
            processes=os.environ.get("WORLD_SIZE", "1"), processes_variable="WORLD_SIZE",
            per_node=os.environ.get("LOCAL_WORLD_SIZE", ""),
            per_node_variable="LOCAL_WORLD_SIZE", ask_for="start torchrun with --nproc_per_node=<devices per node> "
            "--nnodes=<num_nodes>", job_folder="runs/<name>", started_again="the command run again")
    if in_slurm_job():
        return Launcher(
            name="SLURM job", by="SLURM", unit="task(s)", runs_as="tasks (one training process each)",
            processes=os.environ.get("SLURM_NTASKS", "1"), processes_variable="SLURM_NTASKS",
            per_node=os.environ.get("SLURM_NTASKS_PER_NODE", ""),
            per_node_variable="SLURM_NTASKS_PER_NODE", ask_for="ask for as many tasks (--ntasks-per-node=<devices per "
            "node>, --nodes=<num_nodes>) and start the run with srun", job_folder="runs/$SLURM_JOB_ID",
            started_again="a requeued job")
    return None


def shared_folder_problem(arguments: list[str]) -> str | None:
    """Why a run that several launched processes start is refused: without a folder given, each would make a run
    folder of its own (they start a moment apart), and only the first would hold the run."""
    from src.utils.path_overrides import is_multirun

    launcher = external_launcher()
    if launcher is None or not launcher.processes.isdigit() or int(launcher.processes) < 2:
        return None
    if is_multirun(arguments):
        if launcher.name.startswith("SLURM"):
            return None  # hydra/launcher=slurm submits each job
        return (f"This {launcher.name} runs the command in {launcher.processes} {launcher.runs_as}, each of which would "
                "run the whole sweep: start torchrun for each run, or sweep without torchrun, with "
                "++trainer.strategy=ddp_spawn.")
    if any(word.lstrip("+").startswith("hydra.run.dir=") for word in arguments):
        return None
    return (f"This {launcher.name} runs the command in {launcher.processes} {launcher.runs_as}, which must share one run "
            f"folder: give it on the command line, e.g. hydra.run.dir={launcher.job_folder} (with ckpt_path=last, "
            f"{launcher.started_again} continues there).")
