"""Benchmark, measured side by side in one run on this machine (a benchmark prints figures; tests never time):

  1. data path: this DataModule's train loader vs torchvision's per-sample ToTensor+Normalize DataLoader;
  2. training the fast recipe in-process: Lightning vs a plain PyTorch loop on the same network, data,
     optimizer and schedule, interleaved, median ratio; then, from the first training step to the last, a
     tiny CNN with batch 32, whose steps cost next to nothing: the difference is the framework's own time per
     step, which decides the ratio on a GPU, where a small CNN's step is mostly Python and kernel launches;
  3. whole processes: `python -m src.train experiment=fast` vs a plain PyTorch script doing the same
     training (start to exit), interleaved, median ratio, with the lowest test accuracy and the highest peak memory.

    python -m src.bench                  # real MNIST from data/MNIST/raw
    python -m src.bench --device cuda    # on a GPU machine
    python -m src.bench --device cuda --cuda-graph    # both loops replaying each training step as a CUDA graph
    python -m src.bench --quick          # synthetic data, one repeat: checks that it all runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from src import CONFIG_DIR, PROJECT_ROOT
from src.bench_loops import interleaved_fits, plain_training, synchronize
from src.utils.command_line import require_config_dir
from src.utils.console_output import guard_standard_streams
from src.utils.path_overrides import quoted_path


# The fast recipe shrunk until a training step costs almost nothing (row 2b).
TINY_STEP_OVERRIDES = ["model.channels=[4]", "model.kernel_size=[3]", "model.hidden_size=16", "model.channels_last=false",
                       "data.batch_size=32"]


def fast_config(data_dir: Path, device: str, output_dir: Path, extra_overrides: Sequence[str] = ()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[
            "experiment=fast", f"data.data_dir={quoted_path(str(data_dir))}", "data.download=false",
            f"data.device={device}", f"paths.output_dir={quoted_path(str(output_dir))}", *extra_overrides,
        ])


def data_path(cfg, device: str, max_batches: int) -> tuple[float, float]:
    """Samples per second: this DataModule's train loader vs a torchvision-style per-sample pipeline."""
    import torch
    from hydra.utils import instantiate
    from PIL import Image
    from torchvision import transforms

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    started, samples = time.perf_counter(), 0
    for images, _ in datamodule.train_dataloader():
        samples += len(images.to(device))
    synchronize(device)  # indexing on a GPU only queues the work
    ours = samples / (time.perf_counter() - started)

    raw, labels = datamodule.train_set[0], datamodule.train_set[1]
    pixels = ((raw * cfg.data.std + cfg.data.mean) * 255).round().clamp(0, 255).to(torch.uint8).squeeze(1).cpu()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((cfg.data.mean,), (cfg.data.std,))])

    class PerSample(torch.utils.data.Dataset):  # what torchvision.datasets.MNIST does per item
        def __len__(self):
            return len(pixels)

        def __getitem__(self, i):
            return transform(Image.fromarray(pixels[i].numpy(), mode="L")), int(labels[i])

    loader = torch.utils.data.DataLoader(PerSample(), batch_size=cfg.data.batch_size, shuffle=True, num_workers=0)
    started, samples = time.perf_counter(), 0
    for index, (images, _) in enumerate(loader):
        samples += len(images.to(device))
        if index + 1 >= max_batches:
            break
    return ours, samples / (time.perf_counter() - started)


def whole_process(command: list[str], log: Path) -> tuple[float, float | None]:
    """(wall seconds, peak resident memory in MiB) of one child process, start to exit; the memory is None on Windows,
    which has no os.wait4. Call it before this process grows: Linux counts the parent's memory high-water mark at exec
    in the child's ru_maxrss."""
    started = time.perf_counter()
    with open(log, "w") as output:
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(child.pid, 0)
            exit_code = os.waitstatus_to_exitcode(status)
            peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, else KiB
        else:
            exit_code, peak = child.wait(), None
    wall = time.perf_counter() - started
    if exit_code != 0:
        lines = log.read_text().splitlines()
        errors = [line.split("[ERROR] - ", 1)[1] for line in lines if "[ERROR] - " in line]  # the run's own message
        raise BenchFailed(f"{' '.join(command)} failed: " + (errors[-1] if errors else "\n" + "\n".join(lines[-20:])))
    return wall, peak


def progress(line: str) -> None:
    """What is being measured, on stderr: the whole benchmark takes minutes, and the table comes only at the end."""
    print(line, file=sys.stderr, flush=True)


class BenchFailed(Exception):
    """A run the benchmark started failed: its message, without this process's traceback."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n\n    python")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per loop (median reported)")
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data",
                        help="the folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="synthetic data, one repeat: a smoke test")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="both loops replay each training step as a CUDA graph (model.cuda_graph=true)")
    parser.add_argument("--plain-process", action="store_true", help=argparse.SUPPRESS)  # the plain script of item 3
    args = parser.parse_args()
    guard_standard_streams()  # the table's × on a console without it
    require_config_dir()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: it must be 1 or more (the median of that many interleaved runs).")
    if args.plain_process:
        config = json.loads(os.environ["BENCH_PLAIN_CONFIG"])
        print(json.dumps(plain_training(args.data_dir, config["model"], config["data"], args.device, config["seed"])))
        return

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device {args.device}: it must be cpu, cuda or cuda:N.")
    if not args.quick:  # each run would fail on its own after the others had run, with the same message
        from src.data.mnist_files import folder_above_mnist_raw, missing_files, raw_dir
        from src.errors import UserInputError

        # Absolute: the runs start in the project's folder, not this one.
        args.data_dir = args.data_dir.expanduser().absolute()
        try:
            missing, meant = missing_files(args.data_dir), folder_above_mnist_raw(args.data_dir)
        except UserInputError as err:  # a folder this user may not enter
            parser.error(str(err))
        if missing and meant:
            parser.error(f"--data-dir {args.data_dir} is the MNIST files' own folder: name the folder above MNIST/raw/, "
                         f"--data-dir {meant}.")
        if missing:
            parser.error(f"--data-dir {args.data_dir}: {', '.join(missing)} missing in {raw_dir(args.data_dir)}/ (the "
                         "benchmark does not download). Get them with python -m src.train "
                         f"data.data_dir={args.data_dir}, which downloads them, or copy them there (README: MNIST "
                         "offline); or run with --quick.")
    if args.cuda_graph and not args.device.startswith("cuda"):
        parser.error("--cuda-graph needs --device cuda (CUDA graphs are recorded on a GPU).")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: this machine has no CUDA device torch can use (run on a GPU machine, "
                         "or without --device for the CPU figures).")
    work = Path(tempfile.mkdtemp(prefix="mnist-bench-"))
    try:
        rows = measure(args, work)
    except BenchFailed as err:
        sys.exit(f"python -m src.bench: {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # runs, checkpoints, logs: a failure's log tail is in its error

    data = "synthetic (--quick)" if args.quick else args.data_dir
    graph = ", each training step a CUDA graph" if args.cuda_graph else ""
    print(f"\nmnist-lightning-hydra benchmark: device={args.device}{graph}, data={data}, repeats={args.repeats}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("measure", "this framework", "baseline", "ratio"), widths)))
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


def measure(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str, str]]:
    """The table's rows; every run writes under `work`."""
    from omegaconf import OmegaConf

    if args.quick:
        from src.data.synthetic import write_synthetic_mnist

        args.data_dir, args.repeats = write_synthetic_mnist(work / "data", train_count=6000, test_count=1000), 1
    recipe = ["model.cuda_graph=true"] if args.cuda_graph else []
    cfg = fast_config(args.data_dir, args.device, work / "run", recipe)
    plain_cfg = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                 "data": OmegaConf.to_container(cfg.data, resolve=True), "seed": cfg.seed}
    rows = []

    progress(f"3. whole processes (measured first, while this process is small): {args.repeats} "
             f"pair{'s' if args.repeats > 1 else ''}")
    # 3 first, while this process is still small (see whole_process); alternating, as in item 2. src.train quotes the
    # paths on its command line itself.
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"  # as in item 2: the device asked for, not auto
    train_cmd = [sys.executable, "-m", "src.train", "experiment=fast", f"data.data_dir={args.data_dir}",
                 "data.download=false", f"data.device={args.device}", f"trainer.accelerator={accelerator}", *recipe]
    plain_cmd = [sys.executable, "-m", "src.bench", "--plain-process", f"--data-dir={args.data_dir}", f"--device={args.device}"]
    os.environ["BENCH_PLAIN_CONFIG"] = json.dumps(plain_cfg)
    processes = {"train": [], "plain": []}  # (wall seconds, peak MiB, test accuracy) of each run
    for repeat in range(args.repeats):
        run_dir, plain_log = work / f"process{repeat}", work / f"plain{repeat}.log"
        wall, rss = whole_process([*train_cmd, f"hydra.run.dir={run_dir}"], work / f"train{repeat}.log")
        processes["train"].append((wall, rss, json.loads((run_dir / "metrics.json").read_text())["test/acc"]))
        wall, rss = whole_process(plain_cmd, plain_log)
        processes["plain"].append((wall, rss, json.loads(plain_log.read_text().strip().splitlines()[-1])["test_acc"]))
        progress(f"3. whole processes, pair {repeat + 1} of {args.repeats}: {processes['train'][-1][0]:.1f} s "
                 f"(python -m src.train experiment=fast) and {wall:.1f} s (plain script)")
    # Medians of the times, the highest memory (None where not reported: Windows) and the lowest accuracy: "yes" means
    # every run reached 99%.
    (train_wall, train_rss, train_acc), (plain_wall, plain_rss, plain_acc) = (
        (statistics.median(run[0] for run in runs), None if runs[0][1] is None else max(run[1] for run in runs),
         min(run[2] for run in runs))
        for runs in processes.values())
    process_ratio = statistics.median(train[0] / plain[0] for train, plain in zip(*processes.values()))

    progress("1. data path")
    ours, per_sample = data_path(cfg, args.device, max_batches=5 if args.quick else 40)
    speedup = ours / per_sample
    rows.append(("1. data path, samples/s", f"{ours:,.0f}", f"{per_sample:,.0f} (torchvision per-sample)",
                 f"{speedup:,.0f}×" if speedup >= 10 else f"{speedup:.2f}×"))

    progress(f"2. fast recipe fit: {args.repeats} in Lightning and {args.repeats} in the plain loop, alternating")
    lightning, plain = interleaved_fits(cfg, args.data_dir, args.device, args.repeats)
    ratio = statistics.median(lt["fit_seconds"] / pt["fit_seconds"] for lt, pt in zip(lightning, plain))
    rows.append(("2. fast recipe fit (1 epoch + val), s", f"{statistics.median(r['fit_seconds'] for r in lightning):.2f}",
                 f"{statistics.median(r['fit_seconds'] for r in plain):.2f} (plain loop)", f"{ratio:.2f}×"))
    tiny_cfg = fast_config(args.data_dir, args.device, work / "run", [*TINY_STEP_OVERRIDES, *recipe])
    progress(f"2b. tiny CNN, batch 32: {args.repeats} fits in each loop, alternating")
    lightning, plain = interleaved_fits(tiny_cfg, args.data_dir, args.device, args.repeats)
    lightning_ms, plain_ms = (1000 * statistics.median(r["step_seconds"] for r in runs) / plain[0]["steps"]
                              for runs in (lightning, plain))
    rows.append(("2b. tiny CNN, batch 32: time per step, ms", f"{lightning_ms:.3f}", f"{plain_ms:.3f} (plain loop)",
                 f"{lightning_ms - plain_ms:+.3f} ms"))
    rows.append(("3. whole process, start to exit, s", f"{train_wall:.1f}", f"{plain_wall:.1f} (plain script)", f"{process_ratio:.2f}×"))
    rows.append(("   test accuracy (>= 99%?)", f"{train_acc:.2%} ({'yes' if train_acc >= 0.99 else 'NO'})", f"{plain_acc:.2%} (plain script)", ""))
    if train_rss is not None:
        rows.append(("   peak memory (RSS), MiB", f"{train_rss:.0f}", f"{plain_rss:.0f} (plain script)", ""))
    return rows


if __name__ == "__main__":
    main()
