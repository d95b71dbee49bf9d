"""What every MNIST classifier shares: loss, accuracy metrics, best-val tracking, optimizer and scheduler."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from src.errors import UserInputError
from src.models.cuda_graph import GraphedTrainingStep, cuda_graph_blockers
from src.models.epoch_metrics import BestAccuracy, LossAndAccuracy
from src.models.networks import IMAGE_SIDE, NUM_CLASSES
from src.models.optim import build_optimizer, build_scheduler
from src.models.optim_config import check_momentum_is_used, optimizer_settings
from src.utils.command_words import command_overrides, override_value
from src.utils.resume_check import check_schedule_length
from src.utils.rng import capture_rng_states, restore_rng_states
from src.utils.setting_checks import save_plain_hyperparameters

log = logging.getLogger(__name__)


class DigitClassifier(pl.LightningModule):
    """Subclasses build `self.net` (images N×1×28×28 -> logits N×10) and pass their sizes as plain values.

    Constructor arguments are saved in checkpoints as plain values (numbers, strings, lists, dicts; a Path, a numpy
    number or an OmegaConf container converted), which then load with `torch.load(weights_only=True)`.
    """

    net: torch.nn.Module

    def __init__(
        self,
        optimizer: dict,
        scheduler: dict | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
        cuda_graph: bool | str = False,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, inspect.currentframe())  # the subclass's arguments too
        examples = {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "onecycle"}}
        for group, example in examples.items():  # their values are checked when training starts
            if not isinstance(self.hparams[group], dict | None):
                raise UserInputError(f"model.{group}={override_value(self.hparams[group])} is invalid: "
                                     "it is a group of settings, "
                                     f"such as {example}.")
        if not (isinstance(cuda_graph, bool) or cuda_graph == "auto"):
            raise UserInputError(f"model.cuda_graph={override_value(cuda_graph)} is invalid: it must be true, false or "
                                 "auto (on where the run allows it: one CUDA GPU, 32-bit precision, Adam or AdamW).")
        self._graphed_step: GraphedTrainingStep | None = None  # set by on_fit_start when model.cuda_graph is on
        # The run's overrides, for its checkpoints: a ddp_spawn process that saves one has no Hydra state to read them.
        self._command_overrides = command_overrides()
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_metrics", LossAndAccuracy())
        # Stored in the state dict, so they survive a resume: the best validation accuracy, and the training
        # loss and accuracy of an epoch interrupted halfway (end-of-epoch checkpoints hold them already reset).
        self.val_acc_best = BestAccuracy()
        for metric in (self.val_acc_best, self.train_metrics):
            metric.persistent(True)
        self.register_load_state_dict_pre_hook(_rename_older_metric_states)
        # Without torchmetrics' input checks: each reads a value back from the GPU (NaN check, unique labels),
        # and a host sync per step stalls the GPU. Labels come from the IDX reader, which checks them already.
        self.val_confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False)
        # The latest computed confusion matrix per split (rows: true digit), for figure callbacks.
        self.confusion: dict[str, torch.Tensor] = {}
        # One image: the model summary then shows each layer's input/output sizes and the FLOPs per image.
        # Not when compiled: the summary would compile a graph for a 1-image batch, and dynamo would then
        # recompile the training graph with a dynamic batch size.
        if not compile:
            self.example_input_array = torch.zeros(1, 1, IMAGE_SIDE, IMAGE_SIDE)

    @property
    def example_input_array(self) -> torch.Tensor | None:
        """The model summary's example image, in the weights' dtype: with trainer.precision=bf16-true (or 16-true)
        the weights are converted, and the summary's FLOP count would multiply float32 by bfloat16."""
        example = self._example_input_array
        weights = next(self.parameters(), None)
        if isinstance(example, torch.Tensor) and weights is not None and weights.is_floating_point():
            return example.to(weights.dtype)
        return example

    @example_input_array.setter
    def example_input_array(self, example: torch.Tensor | None) -> None:
        self._example_input_array = example

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the running hook on the module before and after each of its hook calls, 44 times a training
        # step; nn.Module's __setattr__ (looking for parameters, buffers and submodules first) took 1.8 µs for each,
        # this 0.3: 0.07 ms less per step, which on a GPU, where the host's time per step sets the pace, counts.
        # (Lightning's own _ResultMetric skips nn.Module's __setattr__ so, for all its attributes.)
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        self._unshare_state()
        if self.hparams.channels_last:  # NHWC: faster convolutions on tensor-core GPUs and with oneDNN on CPUs
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and "_compiled_net" not in self.__dict__:
            # Kept outside the module tree, so state_dict keys (and checkpoints) are the same compiled or not.
            self.__dict__["_compiled_net"] = torch.compile(self.net)

    def _unshare_state(self) -> None:
        """ddp_spawn hands the model to its processes in shared memory. Lightning gives each process its own
        parameters, but buffers (batch-norm statistics) and metric states stayed shared, so every process counted
        its test images into one confusion matrix, which the sync then summed again: 200 of 100 images."""
        for module in self.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_shared():
                    module._buffers[name] = buffer.clone()
            if isinstance(module, Metric):
                for name in module._defaults:
                    state = getattr(module, name)
                    if isinstance(state, torch.Tensor) and state.is_shared():
                        setattr(module, name, state.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.__dict__.get("_compiled_net", self.net)(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one batch, with the split's metrics updated (they are logged once per epoch)."""
        images, labels = batch
        loss, logits = self._loss_and_logits(images, labels, split)
        self._update_metrics(split, loss, logits, labels)
        return loss, logits.detach()

    def _loss_and_logits(self, images: torch.Tensor, labels: torch.Tensor,
                         split: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(images)
        if logits.shape != (len(labels), NUM_CLASSES):  # sizes are known on the host: no wait for the GPU
            raise UserInputError(f"{type(self).__name__} returned {tuple(logits.shape)} for {len(labels)} images: a model "
                                 f"must return {NUM_CLASSES} logits per image, N×{NUM_CLASSES}.")
        # Smoothing regularizes training only: val/test losses stay plain cross-entropy, comparable across runs.
        smoothing = self.hparams.label_smoothing if split == "train" else 0.0
        return F.cross_entropy(logits, labels, label_smoothing=smoothing), logits

    def _update_metrics(self, split: str, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        getattr(self, f"{split}_metrics").update(loss, logits, labels)

    def _log_epoch_metrics(self, split: str) -> None:
        """Log the split's loss and accuracy over the epoch (synchronized across ranks), then start afresh.

        Once per epoch, not per step: Lightning walks a logged metric's state on every `self.log` call. Logging
        both every step made Lightning's own time per step 2.3× as long (+1.4 against +0.6 ms over a plain loop,
        on a 2-core CPU); on a GPU, where a small CNN's step is a few ms of Python, that decides the speed.
        """
        metrics = getattr(self, f"{split}_metrics")
        if not metrics.update_called:
            return  # already logged this epoch
        loss, acc = metrics.compute()
        # on_step/on_epoch: the defaults of `on_train_batch_end` are the opposite. sync_dist: compute() has
        # synchronized the value already; saying so keeps Lightning from warning in DDP (it averages equal values).
        options = {"on_step": False, "on_epoch": True, "sync_dist": True}
        self.log(f"{split}/loss", loss, prog_bar=split != "test", **options)
        self.log(f"{split}/acc", acc, prog_bar=True, **options)
        metrics.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._graphed_step is None:
            return self._step(batch, "train")[0]
        images, labels = batch
        loss, logits = self._graphed_step.step(images, labels)  # the weights are updated already
        self._update_metrics("train", loss, logits, labels)
        return loss

    def on_fit_start(self) -> None:
        self._graphed_step = None
        if self.hparams.cuda_graph is False:
            return
        trainer = self.trainer
        blockers = cuda_graph_blockers(
            on_cuda=self.device.type == "cuda", strategy=type(trainer.strategy).__name__,
            precision=str(trainer.precision), compiled=self.hparams.compile,
            optimizer_name=str(optimizer_settings(self.hparams.optimizer)["name"]),
            gradient_clip_val=trainer.gradient_clip_val, accumulate_grad_batches=trainer.accumulate_grad_batches,
            detect_anomaly=bool(getattr(trainer, "_detect_anomaly", False)))  # Trainer(detect_anomaly=) keeps it there
        if blockers and self.hparams.cuda_graph is True:
            raise UserInputError(f"model.cuda_graph=true cannot be used in this run: {'; '.join(blockers)}. Change "
                                 "that, or set model.cuda_graph=auto (a graph where the run allows it) or false.")
        if blockers:
            if self.device.type == "cuda":  # on a CPU, off is what auto means
                log.info("model.cuda_graph=auto: no CUDA graph in this run (%s).", "; ".join(blockers))
            return
        loss_fn = functools.partial(self._loss_and_logits, split="train")
        self._graphed_step = GraphedTrainingStep(loss_fn, trainer.optimizers[0])

    def on_fit_end(self) -> None:
        self._graphed_step = None  # frees the graph's memory; a later fit records its own

    # With a CUDA graph, training_step has done the whole update (forward, backward and optimizer step), so
    # Lightning's zero_grad, backward and step have nothing left to do. Its step counting, scheduler and other hooks
    # are unchanged, but `on_before_optimizer_step` is not called (no callback here uses it).
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._graphed_step is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self._graphed_step is None:
            super().backward(loss, *args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if self._graphed_step is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        else:
            optimizer_closure()  # runs training_step

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the epoch's last batch rather than in `on_train_epoch_end`, which Lightning calls on callbacks
        # (the figures, say) before the module: they see this epoch's training metrics, as validation does.
        if self.trainer.is_last_batch:
            self._log_epoch_metrics("train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")  # an epoch cut short by trainer.max_steps has no last batch

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Returns the logits, so callbacks (figures) can see predictions without recomputing them."""
        logits = self._step(batch, "val")[1]
        self.val_confusion.update(logits, batch[1])
        return logits

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits = self._step(batch, "test")[1]
        self.test_confusion.update(logits, batch[1])
        return logits

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (N×10) of a batch of normalized images, or of an (images, labels) batch."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=1)

    def _finish_confusion(self, split: str) -> torch.Tensor:
        metric = getattr(self, f"{split}_confusion")
        self.confusion[split] = metric.compute().cpu()  # synchronized across ranks
        metric.reset()
        return self.confusion[split]

    def on_validation_epoch_end(self) -> None:
        self._finish_confusion("val")
        if not self.trainer.sanity_checking:  # a couple of batches of an untrained model must not count as the best
            self.val_acc_best(self.val_metrics.compute()[1])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self._log_epoch_metrics("val")

    def best_val_acc(self) -> float | None:
        """The best validation accuracy so far, also when this fit had no epoch left to run (a finished run resumed)."""
        best = float(self.val_acc_best.max_value)  # -inf before any validation
        return best if math.isfinite(best) else None

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        confusion = self._finish_confusion("test")
        # Each test image counted once, on any number of ranks. sync_dist as above: the matrix is synchronized already.
        self.log("test/images", float(confusion.sum()), sync_dist=True)
        images_per_class = confusion.sum(dim=1)
        per_class = confusion.diag() / images_per_class.clamp(min=1)
        for digit, (accuracy, images) in enumerate(zip(per_class.tolist(), images_per_class.tolist())):
            if images:  # a digit with no test images (part of the test set, other data) has no accuracy
                self.log(f"test/acc_class/{digit}", accuracy, sync_dist=True)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.hparams.optimizer)
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            if (self.hparams.scheduler or {}).get("name", "none") != "none":
                raise UserInputError("model.scheduler needs a finite run: set trainer.max_epochs or max_steps.")
            total_steps = 0
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, int(total_steps))
        check_momentum_is_used(self.hparams.optimizer, self.hparams.scheduler)  # here too for models built in Python
        if scheduler is None:
            return optimizer
        if self.trainer.ckpt_path:  # a resume (a fit of its own after an earlier resume of this model is not)
            check_schedule_length(self.hparams.scheduler["name"], getattr(self, "_resumed_schedule_steps", None),
                                  int(total_steps), self.trainer.ckpt_path, getattr(self, "_resumed_overrides", None))
        self.schedule_steps = int(total_steps)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    @property
    def class_path(self) -> str:
        """The class as its checkpoints record it: a plain string, so tools can rebuild the right class from a
        checkpoint alone."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_class"] = self.class_path
        if self._graphed_step is not None and checkpoint.get("optimizer_states"):
            self._graphed_step.plain_optimizer_state(checkpoint["optimizer_states"][0])
        checkpoint["rng_states"] = capture_rng_states()
        if os.environ.get("PL_GLOBAL_SEED", "").isdigit():  # seed_everything's (a seed=null run's draw, for its resume)
            checkpoint["run_seed"] = int(os.environ["PL_GLOBAL_SEED"])
        if self.device.type == "cpu":  # CPU sums depend on it: a resume on the CPU takes the same
            checkpoint["cpu_threads"] = torch.get_num_threads()
        overrides = command_overrides() or self._command_overrides
        if overrides is not None:  # what a refused resume tells the user to repeat (strings only: a plain value)
            checkpoint["command_overrides"] = overrides
        if getattr(self, "schedule_steps", None) is not None:
            checkpoint["schedule_steps"] = self.schedule_steps
        if self._trainer is not None:  # the HParams row of a checkpoint tested alone shows them
            checkpoint["trainer_settings"] = {"accumulate_grad_batches": int(self.trainer.accumulate_grad_batches),
                                              "gradient_clip_val": float(self.trainer.gradient_clip_val or 0.0)}
        if self._several_processes():  # in every process at once, as each takes part in saving a checkpoint
            sums = checkpoint["state_dict"]
            checkpoint["training_sums_by_process"] = {key: self.all_gather(sums[key]).tolist()
                                                      for key in TRAINING_SUMS if key in sums}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Only a resumed fit continues the run; load_from_checkpoint or trainer.test(ckpt_path=...) load weights for a
        # new use (a later fit, fine-tuning, starts anew).
        if self._trainer is None or self._trainer.state.fn != TrainerFn.FITTING:
            return
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])  # so a resumed run continues exactly
        self._resumed_schedule_steps = checkpoint.get("schedule_steps")
        self._resumed_overrides = checkpoint.get("command_overrides")
        _own_training_sums(checkpoint, self.trainer.global_rank, self.trainer.world_size)

    def _several_processes(self) -> bool:
        return self._trainer is not None and self._trainer.world_size > 1 and torch.distributed.is_initialized()


# The training loss and accuracy of the epoch so far. Each process sums its own share of the images, and the state
# dict of a checkpoint is the first process's alone: loaded in every process, its half-epoch was counted twice.
TRAINING_SUMS = ("train_metrics.loss_sum", "train_metrics.correct", "train_metrics.images")


def _own_training_sums(checkpoint: dict, rank: int, world_size: int) -> None:
    """Each process resumes its own sums (so the curve continues bit-exact); with another number of processes, the
    first takes all of them."""
    state = checkpoint["state_dict"]
    for key, by_process in (checkpoint.get("training_sums_by_process") or {}).items():
        if key in state:
            own = by_process[rank] if len(by_process) == world_size else sum(by_process) if rank == 0 else 0
            state[key] = torch.tensor(own, dtype=state[key].dtype)


def _rename_older_metric_states(module, state_dict: dict, prefix: str, *args) -> None:
    """A load_state_dict pre-hook: checkpoints saved before LossAndAccuracy hold the same training sums as torchmetrics'
    MeanMetric (`train_loss`) and MulticlassAccuracy (`train_acc`) states. Renamed in place, so those checkpoints
    still load (resumed, tested, or with `load_from_checkpoint`)."""
    older = {"loss_sum": "train_loss.mean_value", "images": "train_loss.weight", "correct": "train_acc.tp"}
    # All of them and no new one, else the strict load names what does not fit (a damaged file, a subclass's own metric).
    if any(prefix + key not in state_dict for key in older.values()) or prefix + "train_metrics.loss_sum" in state_dict:
        return
    for name, key in older.items():
        value = state_dict.pop(prefix + key).reshape(())
        state_dict[f"{prefix}train_metrics.{name}"] = value.long() if name == "images" else value  # a float count there
    for stale in ("fp", "tn", "fn"):
        state_dict.pop(f"{prefix}train_acc.{stale}", None)
