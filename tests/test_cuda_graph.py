"""model.cuda_graph: a graphed training step updates the weights as an eager one does, and is refused or left off
where it cannot run (the graph itself needs a CUDA GPU: those tests are skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserInputError
from src.models.cnn import CNN
from src.models.cuda_graph import WARMUP_STEPS, GraphedTrainingStep, adam_step, cuda_graph_blockers
from src.models.loading import load_classifier
from src.models.optim import build_optimizer
from src.train import train
from tests.conftest import compose_config, tiny_run_overrides

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RUNNABLE = dict(on_cuda=True, strategy="SingleDeviceStrategy", precision="32-true", compiled=False,
                optimizer_name="adam", gradient_clip_val=None, accumulate_grad_batches=1, detect_anomaly=False)


def test_a_run_that_allows_a_graph_has_no_blockers_and_each_setting_against_it_is_named():
    assert cuda_graph_blockers(**RUNNABLE) == [] and cuda_graph_blockers(**{**RUNNABLE, "optimizer_name": "adamw"}) == []
    against = {
        "on_cuda": (False, "does not run on a CUDA GPU"),
        "strategy": ("DDPStrategy", "Lightning's DDPStrategy (a graph needs a run on one device"),
        "detect_anomaly": (True, "trainer.detect_anomaly=true"),
        "precision": ("bf16-mixed", "trainer.precision=bf16-mixed"),
        "compiled": (True, "model.compile=true"),
        "optimizer_name": ("sgd", "model.optimizer.name=sgd"),
        "gradient_clip_val": (1.0, "trainer.gradient_clip_val=1.0"),
        "accumulate_grad_batches": (4, "trainer.accumulate_grad_batches=4"),
    }
    for key, (value, named) in against.items():
        blockers = cuda_graph_blockers(**{**RUNNABLE, key: value})
        assert len(blockers) == 1 and named in blockers[0], (key, blockers)


def test_cuda_graph_true_on_the_cpu_is_one_clear_error(tmp_path, synthetic_data_dir):
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model.cuda_graph=true"])
    with pytest.raises(UserInputError, match=r"^model\.cuda_graph=true cannot be used in this run: training does not "
                                             r"run on a CUDA GPU\. .*model\.cuda_graph=auto"):
        train(cfg)


@pytest.mark.parametrize("value", ["yes", 1, "on", None])
def test_cuda_graph_takes_true_false_or_auto(value):
    with pytest.raises(UserInputError, match=r"^model\.cuda_graph=\S+ is invalid: it must be true, false or auto"):
        CNN(optimizer={"name": "adam", "lr": 1e-3}, cuda_graph=value)


def test_auto_on_the_cpu_trains_eagerly_and_is_saved_as_a_plain_setting(tmp_path, synthetic_data_dir, monkeypatch):
    steps = []
    monkeypatch.setattr(GraphedTrainingStep, "step", lambda *args: steps.append(args))
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model.cuda_graph=auto"])
    metrics = train(cfg)
    assert metrics["status"] == "ok" and not steps
    checkpoint = torch.load(metrics["best_model_path"], weights_only=True)
    assert checkpoint["hyper_parameters"]["cuda_graph"] == "auto"


@pytest.mark.parametrize("optimizer_class, weight_decay",
                         [(torch.optim.Adam, 0.0), (torch.optim.Adam, 0.01), (torch.optim.AdamW, 0.05)])
def test_the_graphs_adam_step_is_torchs_with_the_rate_and_betas_as_tensors(optimizer_class, weight_decay):
    """On the CPU: the update a graph records, against torch's own, while OneCycle changes the rate and beta1."""
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    nets = [tiny_network(), tiny_network()]
    # eps 1e-3: large enough to matter in every update, so where it is added counts.
    optimizers = [optimizer_class(net.parameters(), lr=0.01, weight_decay=weight_decay, eps=1e-3) for net in nets]
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=12) for opt in optimizers]
    for step in range(12):
        for net, optimizer, scheduler in zip(nets, optimizers, schedulers):
            optimizer.zero_grad()
            F.cross_entropy(net(images), labels).backward()
            if optimizer is optimizers[1] and step > 0:  # the first step creates the optimizer's state
                group = optimizer.param_groups[0]
                adam_step(optimizer, [{"lr": torch.tensor(group["lr"]), "betas": tuple(map(torch.tensor, group["betas"]))}])
            else:
                optimizer.step()
            scheduler.step()
    assert optimizers[1].param_groups[0]["betas"][0] != 0.95  # beta1 cycled
    for expected, actual in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(nets[0][0].weight, tiny_network()[0].weight)  # it trained


def tiny_network() -> nn.Module:
    # No dropout: graphed and eager steps must compute the same numbers. No bias before the batch norm: its gradient
    # would be rounding noise, which Adam scales up to whole steps.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def train_steps(net: nn.Module, batches: list, graphed: bool, weight_decay: float = 0.0) -> GraphedTrainingStep | None:
    """Adam(W) with OneCycle (learning rate and beta1 change every step), as DigitClassifier's runs use them."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=len(batches))

    def loss_and_logits(images, labels):
        logits = net(images)
        return F.cross_entropy(logits, labels, label_smoothing=0.1), logits

    step = GraphedTrainingStep(loss_and_logits, optimizer) if graphed else None
    for images, labels in batches:
        if step is not None:
            loss, logits = step.step(images, labels)
            torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
        else:
            optimizer.zero_grad()
            loss_and_logits(images, labels)[0].backward()
            optimizer.step()
        scheduler.step()
    return step


@needs_cuda
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_graphed_steps_update_the_weights_as_eager_steps_do(weight_decay):
    generator = torch.Generator().manual_seed(1)
    # Smaller batches run eagerly: one among the warm-up steps (the graph is still recorded for a warm shape, 16),
    # one after the recording, between replays.
    sizes = [16, 16, 5, 16] + [16] * 5 + [5] + [16] * 3
    batches = [(torch.randn(n, 1, 28, 28, generator=generator).cuda(), torch.randint(0, 10, (n,), generator=generator).cuda())
               for n in sizes]
    eager, graphed = tiny_network().cuda(), tiny_network().cuda()
    train_steps(eager, batches, graphed=False, weight_decay=weight_decay)
    step = train_steps(graphed, batches, graphed=True, weight_decay=weight_decay)
    assert step.eager_steps == WARMUP_STEPS + 2 and step.replays == len(sizes) - WARMUP_STEPS - 2
    assert step.images.shape[0] == 16
    for (name, expected), actual in zip(eager.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=name)


def test_lightning_around_a_graphed_step_trains_as_its_own_loop_does(tmp_path, synthetic_data_dir, monkeypatch):
    """What a CPU can check of a graphed run: the module's hooks that hand the whole update to the graph's `step`
    (backward skipped, Lightning's optimizer step running only the closure). With a stand-in `step` doing the eager
    update, the run must end with the weights, step count and schedule of a run without it."""
    import src.models.classifier as classifier

    class EagerStandIn(GraphedTrainingStep):
        calls = 0

        def step(self, images, labels):
            EagerStandIn.calls += 1
            self.optimizer.zero_grad()
            loss, logits = self.loss_fn(images, labels)
            loss.backward()
            self.optimizer.step()
            return loss.detach(), logits.detach()

    def run(name: str, *extra: str):
        metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / name), "model=cnn",
                                        "trainer.max_epochs=2", "seed=3", *extra]))
        assert metrics["status"] == "ok"
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)

    eager = run("eager")
    monkeypatch.setattr(classifier, "cuda_graph_blockers", lambda **settings: [])
    monkeypatch.setattr(classifier, "GraphedTrainingStep", EagerStandIn)
    handed_over = run("handed_over", "model.cuda_graph=true")
    assert EagerStandIn.calls == handed_over["global_step"] == eager["global_step"] == 2 * 10  # 320 images, batch 32
    assert handed_over["lr_schedulers"] == eager["lr_schedulers"]
    assert handed_over["optimizer_states"][0]["state"][0]["step"] == eager["optimizer_states"][0]["state"][0]["step"]
    for name, expected in eager["state_dict"].items():
        torch.testing.assert_close(handed_over["state_dict"][name], expected, rtol=0, atol=0, msg=name)


@needs_cuda
def test_a_graphed_run_trains_and_its_checkpoint_resumes_on_the_cpu(tmp_path, synthetic_data_dir, monkeypatch):
    replays = []
    real_step = GraphedTrainingStep.step

    def counting_step(self, images, labels):
        result = real_step(self, images, labels)
        replays.append(self.replays)
        return result

    monkeypatch.setattr(GraphedTrainingStep, "step", counting_step)
    run_dir = tmp_path / "run"
    tiny = [o for o in tiny_run_overrides(synthetic_data_dir, run_dir) if o != "trainer=cpu"]
    metrics = train(compose_config([*tiny, "trainer=gpu", "model=cnn", "model.cuda_graph=true",
                                    "model.channels_last=true", "trainer.max_epochs=2", "data.batch_size=30"]))
    assert metrics["status"] == "ok" and metrics["test/acc"] > 0.5
    # 320 training images: 10 batches of 30 per epoch, replayed once recorded, and a last one of 20, run eagerly. The
    # second epoch replays after the first epoch's checkpoints were saved (which must leave the live optimizer state).
    assert len(replays) == 2 * 11 and replays[-1] == 2 * 10 - WARMUP_STEPS
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 22 and checkpoint["lr_schedulers"][0]["last_epoch"] == 22
    saved = checkpoint["optimizer_states"][0]
    assert not any(group["capturable"] for group in saved["param_groups"])
    assert all(state["step"].item() == 22 for state in saved["state"].values())  # replays counted Adam's steps
    # What an eager run saves, so it continues on a CPU too (where capturable Adam cannot run).
    model, _ = load_classifier(run_dir / "checkpoints" / "last.ckpt")
    optimizer = build_optimizer(model.parameters(), model.hparams.optimizer)
    optimizer.load_state_dict(saved)
    F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4)).backward()
    optimizer.step()
