"""A whole training step (forward, loss, backward, optimizer step) recorded once as a CUDA graph and replayed.

A small network's step on a GPU is the host launching ~100 tiny kernels: 3.4 ms on an H200 in a probe loop, of which
a replayed graph (one launch) left 0.54 ms at the same accuracy (README "CUDA graphs": not yet measured with this code).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WARMUP_STEPS = 3  # eager steps before the capture: the optimizer's state and cuDNN's plans are created lazily
GRAPH_OPTIMIZERS = ("adam", "adamw")  # adam_step below

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cuda_graph_blockers(*, on_cuda: bool, strategy: str, precision: str, compiled: bool, optimizer_name: str,
                        gradient_clip_val, accumulate_grad_batches: int, detect_anomaly: bool) -> list[str]:
    """The settings that rule out a graphed training step, each named as the user would change it. `strategy`:
    the class name of Lightning's strategy (a graph needs SingleDeviceStrategy: DDP's gradient hooks would be
    recorded too)."""
    blockers = []
    if not on_cuda:
        blockers.append("training does not run on a CUDA GPU")
    if strategy != "SingleDeviceStrategy":
        blockers.append(f"Lightning's {strategy} (a graph needs a run on one device: trainer.strategy=auto, "
                        "trainer.devices=1)")
    if precision != "32-true":
        blockers.append(f"trainer.precision={precision} (graphs are recorded in 32-bit precision)")
    if compiled:
        blockers.append("model.compile=true")
    if optimizer_name not in GRAPH_OPTIMIZERS:
        blockers.append(f"model.optimizer.name={optimizer_name} (graphs work with {' or '.join(GRAPH_OPTIMIZERS)})")
    if gradient_clip_val:
        blockers.append(f"trainer.gradient_clip_val={gradient_clip_val}")
    if accumulate_grad_batches != 1:
        blockers.append(f"trainer.accumulate_grad_batches={accumulate_grad_batches}")
    if detect_anomaly:  # its checks read values back to the host during backward
        blockers.append("trainer.detect_anomaly=true")
    return blockers


class GraphedTrainingStep:
    """`step(images, labels)` updates the weights and returns the batch's (loss, logits), which the next step
    overwrites.

    Steps run eagerly (on a side stream) until WARMUP_STEPS of them had one batch shape; the next step of that shape
    is recorded, and replayed by every later one. A batch of another shape (an epoch's last, smaller one) runs
    eagerly. The optimizer's param groups keep plain float learning rates and betas, so schedulers, the LR monitor
    and checkpoints see what they always see; their values are copied into the graph's own tensors before each
    replay.
    """

    def __init__(self, loss_fn: LossFn, optimizer: torch.optim.Optimizer) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.replays = 0
        self.steps_by_shape: dict[tuple, int] = {}  # eager steps per batch shape: a graph is recorded for a warm one
        self.plain_capturable: list | None = None  # the param groups' `capturable` before the first step set it

    def _prepare_optimizer(self) -> None:
        """At the first step, after Lightning has restored a resumed run's optimizer state."""
        self.plain_capturable = [group.get("capturable") for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["capturable"] = True  # eager steps keep the step counter on the GPU, where adam_step reads it
        for param, state in self.optimizer.state.items():  # a restored counter is on the host
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(param.device, torch.float32)
        # Else torch warns that a capturable step run eagerly is slow: only a few steps are eager here.
        self.optimizer._warned_capturable_if_run_uncaptured = True

    def plain_optimizer_state(self, optimizer_state: dict) -> None:
        """Make a saved `optimizer.state_dict()` what an eager run saves: a checkpoint of a graphed run then resumes
        anywhere, a CPU included (where capturable Adam cannot run)."""
        if self.plain_capturable is None:
            return  # nothing changed yet
        for group, capturable in zip(optimizer_state["param_groups"], self.plain_capturable):
            group["capturable"] = capturable
        for key, state in optimizer_state["state"].items():  # the live optimizer's dicts: replaced, not changed
            if isinstance(state.get("step"), torch.Tensor):
                optimizer_state["state"][key] = {**state, "step": state["step"].cpu()}

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is not None and images.shape == self.images.shape and labels.shape == self.labels.shape:
            self._copy_hyperparameters()
            self.images.copy_(images)
            self.labels.copy_(labels)
            self.graph.replay()
            self.replays += 1
            return self.loss, self.logits
        if self.plain_capturable is None:
            self._prepare_optimizer()
        shape = (tuple(images.shape), tuple(labels.shape))
        if self.graph is None and self.steps_by_shape.get(shape, 0) >= WARMUP_STEPS:
            return self._capture(images, labels)
        self.steps_by_shape[shape] = self.steps_by_shape.get(shape, 0) + 1
        return self._eager_step(images, labels)

    def _eager_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In place after the capture: the gradients are the graph's own tensors then, unless Lightning set them to None
        # before a validation (replays never read `.grad`: the graph writes and reads the tensors it recorded).
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        if self.graph is None:  # warm-up: on a side stream, as the capture will be
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss, logits = self._update(images, labels)
            torch.cuda.current_stream().wait_stream(side)
        else:
            loss, logits = self._update(images, labels)
        self.eager_steps += 1
        return loss.detach(), logits.detach()

    def _update(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.loss_fn(images, labels)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.images, self.labels = images.clone(), labels.clone()
        # What OneCycle changes every step, as tensors the graph reads (see adam_step).
        self.hyperparameters = [
            {"lr": torch.tensor(float(group["lr"]), device=images.device),
             "betas": tuple(torch.tensor(float(beta), device=images.device) for beta in group["betas"])}
            for group in self.optimizer.param_groups
        ]
        self.optimizer.zero_grad(set_to_none=True)  # gradients allocated inside the graph, written by each replay
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, logits = self.loss_fn(self.images, self.labels)
            loss.backward()
            adam_step(self.optimizer, self.hyperparameters)
        # Detached: holding the recorded autograd graph would keep its gradient nodes for later eager steps.
        self.loss, self.logits = loss.detach(), logits.detach()
        self.graph = graph
        graph.replay()  # recording ran nothing: this is the step itself
        self.replays += 1
        return self.loss, self.logits

    def _copy_hyperparameters(self) -> None:
        for group, tensors in zip(self.optimizer.param_groups, self.hyperparameters):
            tensors["lr"].fill_(group["lr"])
            for tensor, value in zip(tensors["betas"], group["betas"]):
                tensor.fill_(value)


@torch.no_grad()
def adam_step(optimizer: torch.optim.Optimizer, hyperparameters: list[dict]) -> None:
    """torch's Adam/AdamW update with the learning rate and both betas read from tensors (`hyperparameters`, one dict
    per param group), on the optimizer's own state. torch's capturable Adam takes a tensor learning rate but reads
    tensor betas back to the host (`_foreach_lerp_`, `_foreach_pow`), which a capture cannot do, and OneCycle
    changes beta1 every step."""
    decoupled = isinstance(optimizer, torch.optim.AdamW)
    for group, values in zip(optimizer.param_groups, hyperparameters):
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("adam_step implements neither amsgrad nor maximize")
        lr, (beta1, beta2) = values["lr"], values["betas"]
        params = [param for param in group["params"] if param.grad is not None]
        if not params:
            continue
        states = [optimizer.state[param] for param in params]
        grads = [param.grad for param in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        if group["weight_decay"]:
            if decoupled or group.get("decoupled_weight_decay"):
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            else:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, 1 - beta1))
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(torch._foreach_mul(grads, grads), 1 - beta2))
        for param, exp_avg, exp_avg_sq, step in zip(params, exp_avgs, exp_avg_sqs, steps):
            denominator = exp_avg_sq.sqrt() / (1 - beta2**step).sqrt() + group["eps"]
            param.sub_(lr / (1 - beta1**step) * exp_avg / denominator)
