"""The two training loops `python -m src.bench` puts side by side: the fast recipe through Lightning, and the same
training by hand (tensors, a permutation per epoch, no framework) on the same network, data, optimizer and schedule."""

from __future__ import annotations

import logging
import time
from pathlib import Path


def plain_training(data_dir: Path, model_cfg: dict, data_cfg: dict, device: str, seed: int) -> dict:
    """The same training as the fast recipe, by hand: tensors, a permutation per epoch, no framework."""
    import torch
    import torch.nn.functional as F

    from src.data.batches import validation_split
    from src.data.mnist_files import load_split
    from src.models.cuda_graph import GraphedTrainingStep, cuda_graph_blockers
    from src.models.networks import cnn_network
    from src.models.optim import build_optimizer, build_scheduler
    from src.models.optim_config import optimizer_settings

    started = time.perf_counter()
    torch.manual_seed(seed)
    normalize = lambda x: ((x.float() / 255 - data_cfg["mean"]) / data_cfg["std"]).unsqueeze(1).to(device)  # noqa: E731
    images, labels = load_split(data_dir, "train")
    val_idx, train_idx = validation_split(len(images), data_cfg["val_size"], data_cfg["split_seed"])
    x_train, y_train = normalize(images[train_idx]), labels[train_idx].to(device)
    x_val, y_val = normalize(images[val_idx]), labels[val_idx].to(device)
    test_images, test_labels = load_split(data_dir, "test")
    x_test, y_test = normalize(test_images), test_labels.to(device)

    network_keys = (
        "channels", "kernel_size", "convs_per_block", "hidden_size", "dropout", "batch_norm", "pool", "conv_dropout"
    )
    net = cnn_network(**{key: model_cfg[key] for key in network_keys}).to(device)
    if model_cfg.get("channels_last"):  # as DigitClassifier does; 1-channel images are already NHWC as they are
        net = net.to(memory_format=torch.channels_last)
    batch_size = data_cfg["batch_size"]
    optimizer = build_optimizer(net.parameters(), model_cfg["optimizer"])
    steps = -(-len(x_train) // batch_size)
    scheduler = build_scheduler(optimizer, model_cfg["scheduler"], steps)["scheduler"]
    smoothing = model_cfg.get("label_smoothing", 0.0)

    def loss_and_logits(images, labels):
        logits = net(images)
        return F.cross_entropy(logits, labels, label_smoothing=smoothing), logits

    # model.cuda_graph: a graph where the settings allow it (`true` with a blocker has failed Lightning's run already).
    graphed = None
    blockers = cuda_graph_blockers(
        on_cuda=torch.device(device).type == "cuda", strategy="SingleDeviceStrategy", precision="32-true",
        compiled=bool(model_cfg.get("compile")), optimizer_name=optimizer_settings(model_cfg["optimizer"])["name"],
        gradient_clip_val=None, accumulate_grad_batches=1, detect_anomaly=False)
    if model_cfg.get("cuda_graph") in (True, "auto") and not blockers:
        graphed = GraphedTrainingStep(loss_and_logits, optimizer)
    fit_started = time.perf_counter()
    net.train()
    for idx in torch.randperm(len(x_train), device=device).split(batch_size):
        if graphed is not None:
            graphed.step(x_train[idx], y_train[idx])
        else:
            loss = loss_and_logits(x_train[idx], y_train[idx])[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    synchronize(device)
    step_seconds = time.perf_counter() - fit_started
    val_acc = accuracy(net, x_val, y_val)
    fit_seconds = time.perf_counter() - fit_started
    return {"fit_seconds": fit_seconds, "step_seconds": step_seconds, "steps": steps, "val_acc": val_acc,
            "test_acc": accuracy(net, x_test, y_test), "seconds": time.perf_counter() - started}


def accuracy(net, images, labels, batch_size: int = 1000) -> float:
    import torch

    net.eval()
    with torch.inference_mode():
        correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    net.train()
    return correct / len(labels)


def lightning_training(cfg) -> dict:
    """`trainer.fit` of the recipe (one epoch + validation), without logging or checkpoints: its seconds, and
    the seconds from the first training step's start to the last one's end."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from src.utils.quiet_lightning import quiet_lightning

    class StepClock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.is_last_batch:
                synchronize(pl_module.device)
                self.seconds = time.perf_counter() - self.started

    quiet_lightning()
    # Its notes on each fit ("GPU available: False", "`Trainer.fit` stopped: ...") said nothing here and buried the
    # benchmark's progress lines; its warnings still show.
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        pl.seed_everything(cfg.seed, verbose=False)
        datamodule = instantiate(cfg.data, _convert_="all")
        model = instantiate(cfg.model, _convert_="all")
        clock = StepClock()
        trainer = pl.Trainer(accelerator="gpu" if cfg.data.device.startswith("cuda") else "cpu", devices=1,
                             max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                             callbacks=[clock])
        datamodule.trainer = trainer
        datamodule.setup("fit")  # loading is the same work for both loops: time training only
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
    finally:
        lightning_log.setLevel(level)
    return {"fit_seconds": time.perf_counter() - started, "step_seconds": clock.seconds}


def synchronize(device) -> None:
    """Wait for the work queued on a GPU, so a clock stopped next counts it done."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_fits(cfg, data_dir: Path, device: str, repeats: int) -> tuple[list[dict], list[dict]]:
    """Lightning's and the plain loop's timings (see each), alternating so drifting machine load hits both alike."""
    from omegaconf import OmegaConf

    model_cfg, data_cfg = (OmegaConf.to_container(part, resolve=True) for part in (cfg.model, cfg.data))
    lightning, plain = [], []
    for _ in range(repeats):
        lightning.append(lightning_training(cfg))
        plain.append(plain_training(data_dir, model_cfg, data_cfg, device, cfg.seed))
    return lightning, plain
