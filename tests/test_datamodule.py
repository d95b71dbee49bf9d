"""MNISTDataModule: splits, tensors, normalization, shuffling and rank sharding."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from src.data import mnist_datamodule
from src.data.batches import EpochBatches, TensorBatchLoader
from src.data.mnist_datamodule import MNISTDataModule
from src.data.mnist_files import load_split
from src.errors import UserInputError


def make_datamodule(data_dir, **kwargs) -> MNISTDataModule:
    options = dict(data_dir=str(data_dir), download=False, batch_size=32, eval_batch_size=50, val_size=80)
    datamodule = MNISTDataModule(**{**options, **kwargs})
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_splits_partition_train_and_test_is_the_official_file(synthetic_data_dir):
    datamodule = make_datamodule(synthetic_data_dir)
    train_images, train_labels = datamodule.train_set
    val_images, val_labels = datamodule.val_set
    assert (len(train_images), len(val_images)) == (320, 80)

    raw_images, raw_labels = load_split(synthetic_data_dir, "train")
    normalized = datamodule.normalize(raw_images)
    # Every train-file image lands in exactly one of train/val (the synthetic images are all distinct).
    rows = {row.numpy().tobytes() for row in normalized}
    train_rows = [row.numpy().tobytes() for row in train_images]
    val_rows = [row.numpy().tobytes() for row in val_images]
    assert not set(train_rows) & set(val_rows)
    assert set(train_rows) | set(val_rows) == rows

    test_images, test_labels = datamodule.test_set
    file_images, file_labels = load_split(synthetic_data_dir, "test")
    assert torch.equal(test_labels, file_labels)
    assert torch.equal(test_images, datamodule.normalize(file_images))


def test_tensors_have_expected_shapes_dtypes_and_normalization(synthetic_data_dir):
    datamodule = make_datamodule(synthetic_data_dir)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (32,) and labels.dtype == torch.int64
    mean, std = 0.1307, 0.3081
    black, white = datamodule.normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8)).flatten().tolist()
    assert black == pytest.approx(-mean / std) and white == pytest.approx((1 - mean) / std)
    assert images.min() >= black - 1e-6 and images.max() <= white + 1e-6


def test_normalization_is_the_formula_bit_for_bit_and_leaves_its_input_alone(synthetic_data_dir):
    """Runs recorded in the README were made with (x / 255 - mean) / std, one new tensor per operation."""
    datamodule = make_datamodule(synthetic_data_dir)
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    expected = ((every_byte.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    assert torch.equal(datamodule.normalize(every_byte), expected)
    as_floats = every_byte.float()  # pixel values already as floats: normalized too, not overwritten
    assert torch.equal(datamodule.normalize(as_floats), expected)
    assert torch.equal(as_floats, every_byte.float())


def test_validation_split_depends_on_split_seed_only(synthetic_data_dir):
    first = make_datamodule(synthetic_data_dir, shuffle_seed=1)
    second = make_datamodule(synthetic_data_dir, shuffle_seed=2)
    other = make_datamodule(synthetic_data_dir, split_seed=7)
    assert torch.equal(first.val_set[1], second.val_set[1]) and torch.equal(first.val_set[0], second.val_set[0])
    assert not torch.equal(first.val_set[0], other.val_set[0])


def test_runs_with_different_seeds_validate_on_the_same_images(synthetic_data_dir, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    def validation_images(seed: int) -> torch.Tensor:
        cfg = compose_config([f"seed={seed}", f"data.data_dir={synthetic_data_dir}", "data.download=false",
                              "data.val_size=80", f"paths.output_dir={tmp_path}"])
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup("fit")
        assert datamodule.hparams.shuffle_seed == seed  # the seed does reach the data: it orders the batches
        return datamodule.val_set[0]

    assert torch.equal(validation_images(1), validation_images(2))


def test_each_split_is_loaded_once(synthetic_data_dir, monkeypatch):
    calls = []
    real_load = mnist_datamodule.load_split
    monkeypatch.setattr(mnist_datamodule, "load_split", lambda d, s: calls.append(s) or real_load(d, s))
    datamodule = make_datamodule(synthetic_data_dir)
    for stage in ("fit", "validate", "test", None):
        datamodule.setup(stage)
    assert sorted(calls) == ["test", "train"]


def test_augmentation_fills_with_the_normalized_value_of_a_blank_pixel(synthetic_data_dir):
    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, mean=0.5, std=0.6, augment={"enabled": True})
    assert datamodule.batch_augment.background == pytest.approx((0 - 0.5) / 0.6)


def test_training_order_is_seeded_and_changes_every_epoch(synthetic_data_dir):
    loader = make_datamodule(synthetic_data_dir, shuffle_seed=3).train_dataloader()
    twin = make_datamodule(synthetic_data_dir, shuffle_seed=3).train_dataloader()
    other_seed = make_datamodule(synthetic_data_dir, shuffle_seed=4).train_dataloader()
    epoch0 = all_batches(loader)[1]
    assert torch.equal(epoch0, all_batches(twin)[1])
    assert not torch.equal(epoch0, all_batches(other_seed)[1])
    loader.sampler.set_epoch(1)
    epoch1 = all_batches(loader)[1]
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0.sort().values, epoch1.sort().values)  # same samples, new order
    loader.sampler.set_epoch(0)
    assert torch.equal(all_batches(loader)[1], epoch0)  # a function of (seed, epoch): resumable
    later_seed = EpochBatches(400, 32, shuffle=True, seed=4)  # not seed + epoch: seed 4's first epoch is not 3's second
    sampler = EpochBatches(400, 32, shuffle=True, seed=3)
    sampler.epoch = 1
    assert not torch.equal(later_seed.indices(), sampler.indices())


def test_a_loop_of_ones_own_gets_a_new_order_each_pass_as_with_a_shuffling_dataloader(synthetic_data_dir):
    """Only Lightning calls set_epoch: without it every pass repeated epoch 0's order."""
    loader = make_datamodule(synthetic_data_dir, shuffle_seed=3).train_dataloader()
    passes = [all_batches(loader)[1] for _ in range(3)]
    reference = make_datamodule(synthetic_data_dir, shuffle_seed=3).train_dataloader()
    for epoch, labels in enumerate(passes):
        reference.sampler.set_epoch(epoch)
        assert torch.equal(labels, all_batches(reference)[1])  # the same orders as Lightning's epochs 0, 1, 2
    assert not torch.equal(passes[0], passes[1])
    # `for x, y in data.train_dataloader():` inside the epoch loop: a new loader each epoch, the same orders.
    datamodule = make_datamodule(synthetic_data_dir, shuffle_seed=3)
    for labels in passes:
        assert torch.equal(all_batches(datamodule.train_dataloader())[1], labels)


def test_loaders_before_setup_and_predict_batches(synthetic_data_dir, tmp_path):
    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, val_size=80)
    with pytest.raises(RuntimeError, match=r"not read yet. Call prepare_data\(\) and setup\('fit'\)"):
        datamodule.train_dataloader()
    from src.models.mlp import MLP

    model = MLP(optimizer={"lr": 0.01}, hidden_sizes=[16])
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    probabilities = torch.cat(trainer.predict(model, datamodule=datamodule))
    (tested,) = trainer.test(model, datamodule=datamodule, verbose=False)
    labels = load_split(synthetic_data_dir, "test")[1]
    assert probabilities.shape == (len(labels), 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(labels)))
    assert (probabilities.argmax(dim=1) == labels).float().mean().item() == pytest.approx(tested["test/acc"])


def test_an_unseeded_datamodule_draws_a_shuffle_seed_and_keeps_it_with_the_hyperparameters(synthetic_data_dir,
                                                                                           monkeypatch):
    """Without a seed (library use) it must still shuffle, not crash; the drawn seed is saved with the hyperparameters,
    and DDP's other processes (started with the first one's environment) take the first one's draw, not one each."""
    from pytorch_lightning.utilities import rank_zero_only

    monkeypatch.setenv("MNIST_SHUFFLE_SEED", "0")  # removed again after the test
    datamodule = make_datamodule(synthetic_data_dir, shuffle_seed=None)
    seed = datamodule.hparams.shuffle_seed
    assert isinstance(seed, int)
    twin = make_datamodule(synthetic_data_dir, shuffle_seed=seed)
    assert torch.equal(all_batches(datamodule.train_dataloader())[1], all_batches(twin.train_dataloader())[1])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert make_datamodule(synthetic_data_dir, shuffle_seed=None).hparams.shuffle_seed == seed


def test_a_restored_loader_continues_its_epoch_after_the_batches_already_trained_on(synthetic_data_dir):
    datamodule = make_datamodule(synthetic_data_dir, shuffle_seed=3)
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(1)
    whole_epoch = list(loader)
    loader.sampler.set_epoch(1)  # the same epoch again (a pass without set_epoch is the next epoch's)
    batches = iter(loader)
    trained_on = [next(batches) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3}

    resumed = make_datamodule(synthetic_data_dir, shuffle_seed=3)
    resumed.load_state_dict(datamodule.state_dict())  # what a checkpoint carries from run to run
    restored = resumed.train_dataloader()
    restored.sampler.set_epoch(1)  # what Lightning does before asking for the first batch
    rest = list(restored)
    assert len(rest) == len(whole_epoch) - 3
    for got, expected in zip(trained_on + rest, whole_epoch, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert restored.state_dict() == {"epoch": 1, "batches": len(whole_epoch)}
    assert len(list(restored)) == len(whole_epoch)  # the skip applies to the resumed epoch only

    other_epoch = datamodule.train_dataloader()
    other_epoch.load_state_dict(state)
    other_epoch.sampler.set_epoch(2)  # a checkpoint of a finished epoch: the next one starts from its start
    assert len(list(other_epoch)) == len(whole_epoch)


@pytest.mark.parametrize("drop_last", [False, True])  # dropping the last training batch never drops test images
def test_eval_loaders_cover_every_sample_once_in_order(synthetic_data_dir, drop_last):
    datamodule = make_datamodule(synthetic_data_dir, drop_last=drop_last)
    images, labels = all_batches(datamodule.test_dataloader())
    assert torch.equal(images, datamodule.test_set[0]) and torch.equal(labels, datamodule.test_set[1])
    assert len(datamodule.val_dataloader()) == 2  # 80 samples, batches of 50
    assert torch.equal(all_batches(datamodule.val_dataloader())[1], datamodule.val_set[1])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_shards(world_size):
    n = 103
    train = [list(EpochBatches(n, 8, shuffle=True, seed=5, rank=r, world_size=world_size).batches()) for r in range(world_size)]
    train_idx = [torch.cat(batches) for batches in train]
    assert len({len(batches) for batches in train}) == 1  # equal step counts keep DDP ranks in lockstep
    flat = torch.cat(train_idx)
    assert len(flat.unique()) == len(flat) == (n // world_size) * world_size
    evaluation = [torch.cat(list(EpochBatches(n, 8, shuffle=False, rank=r, world_size=world_size).batches())) for r in range(world_size)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(n))  # each sample counted exactly once


def test_drop_last_and_batch_count():
    assert len(EpochBatches(100, 32, shuffle=True)) == 4
    assert len(EpochBatches(100, 32, shuffle=True, drop_last=True)) == 3
    assert [len(b) for b in EpochBatches(100, 32, shuffle=True, drop_last=True).batches()] == [32, 32, 32]
    loader = TensorBatchLoader((torch.arange(100),), EpochBatches(100, 32, shuffle=False))
    assert [len(b[0]) for b in loader] == [32, 32, 32, 4]
    # A last training batch of one image is left out (batch norm cannot train on one); evaluation keeps it.
    assert [len(b) for b in EpochBatches(65, 32, shuffle=True).batches()] == [32, 32]
    assert [len(b) for b in EpochBatches(65, 32, shuffle=False).batches()] == [32, 32, 1]
    assert [len(b) for b in EpochBatches(1, 32, shuffle=True).batches()] == [1]


def test_a_training_split_one_image_over_whole_batches_trains(tmp_path, synthetic_data_dir):
    """400 - 79 = 321 = 10 × 32 + 1: the last batch of one image crashed batch norm in the MLP, then in the CNN."""
    from src.train import train
    from tests.conftest import compose_config, tiny_run_overrides

    for model in ("mlp", "cnn"):
        overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path / model), f"model={model}", "data.val_size=79"]
        assert train(compose_config(overrides))["status"] == "ok"


@pytest.mark.parametrize(
    "kwargs, key",
    [({"batch_size": 0}, "data.batch_size"), ({"val_size": 0}, "data.val_size"), ({"val_size": 400}, "data.val_size"),
     ({"batch_size": 32.0}, "data.batch_size"), ({"eval_batch_size": True}, "data.eval_batch_size"),
     ({"val_size": 80.5}, "data.val_size"), ({"std": True}, "data.std"), ({"split_seed": None}, "data.split_seed"),
     ({"split_seed": 2**64}, "data.split_seed"), ({"split_seed": -1}, "data.split_seed"),
     ({"download": "no"}, "data.download"), ({"mean": float("nan")}, "data.mean"), ({"std": float("inf")}, "data.std"),
     ({"std": 1e-30}, "data.std")],
)
def test_bad_sizes_are_clear_errors(synthetic_data_dir, kwargs, key):
    with pytest.raises(UserInputError, match=key):
        make_datamodule(synthetic_data_dir, **kwargs)


def test_a_validation_set_smaller_than_the_number_of_processes_is_a_clear_error(synthetic_data_dir):
    from types import SimpleNamespace

    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, val_size=1)
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2, max_epochs=1)  # as trainer=ddp_cpu gives each rank
    with pytest.raises(UserInputError, match="data.val_size=1 is invalid with 2 processes: .* at least 2"):
        datamodule.setup("fit")
    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, val_size=2)  # one image each: enough
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2, max_epochs=1,
                                         strategy=SimpleNamespace(root_device=torch.device("cpu")))
    datamodule.setup("fit")


def test_a_training_split_too_small_for_each_process_is_a_clear_error(synthetic_data_dir):
    """3 images for 2 processes: one image for each, on which batch norm failed with a traceback in the first step."""
    from types import SimpleNamespace

    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, val_size=397)  # of 400
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2, max_epochs=1)
    with pytest.raises(UserInputError, match=r"data.val_size=397 is invalid with 2 processes: it leaves 3 training images, "
                                             r"and each process trains on its own share, which needs at least 2\."):
        datamodule.setup("fit")
    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, val_size=396)
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2, max_epochs=1,
                                         strategy=SimpleNamespace(root_device=torch.device("cpu")))
    datamodule.setup("fit")
    assert len(datamodule.train_set[0]) == 4


def attach_cpu_trainer(datamodule: MNISTDataModule) -> MNISTDataModule:
    datamodule.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    return datamodule


def loader_batches(datamodule: MNISTDataModule) -> dict[str, list]:
    """Every batch of every loader, on the CPU, training over two epochs."""
    datamodule.prepare_data()
    datamodule.setup()
    train = datamodule.train_dataloader()
    batches = {"val": list(datamodule.val_dataloader()), "test": list(datamodule.test_dataloader())}
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)
        batches[f"train{epoch}"] = list(train)
    return {name: [tuple(t.cpu() for t in batch) for batch in value] for name, value in batches.items()}


def assert_same_batches(first: dict[str, list], second: dict[str, list]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert len(first[name]) == len(second[name]), name
        for a, b in zip(first[name], second[name]):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), name


def test_auto_device_on_cpu_gives_the_same_batches_as_cpu(synthetic_data_dir):
    options = dict(data_dir=str(synthetic_data_dir), download=False, batch_size=32, eval_batch_size=50, val_size=80)
    on_cpu = loader_batches(MNISTDataModule(**options, device="cpu", shuffle_seed=5))
    assert_same_batches(on_cpu, loader_batches(MNISTDataModule(**options, device="auto", shuffle_seed=5)))
    with_trainer = attach_cpu_trainer(MNISTDataModule(**options, device="auto", shuffle_seed=5))
    assert_same_batches(on_cpu, loader_batches(with_trainer))
    assert with_trainer.train_set[0].device.type == "cpu" and with_trainer.hparams.device == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resident_batches_equal_the_cpu_batches(synthetic_data_dir):
    options = dict(data_dir=str(synthetic_data_dir), download=False, batch_size=32, eval_batch_size=50, val_size=80)
    on_cuda = MNISTDataModule(**options, device="cuda", shuffle_seed=5)
    assert_same_batches(loader_batches(MNISTDataModule(**options, device="cpu", shuffle_seed=5)), loader_batches(on_cuda))
    assert all(t.is_cuda for t in (*on_cuda.train_set, *on_cuda.val_set, *on_cuda.test_set))
    images, labels = next(iter(on_cuda.train_dataloader()))
    assert images.is_cuda and labels.is_cuda  # cut on the GPU: nothing to copy per step

    follows_trainer = MNISTDataModule(**options, device="auto")
    follows_trainer.trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False)
    follows_trainer.setup("fit")
    assert follows_trainer.train_set[0].device == follows_trainer.trainer.strategy.root_device


def test_index_batches_are_made_on_the_tensors_device_once_per_epoch(monkeypatch):
    """A GPU-resident loader indexing with CPU indices would still yield GPU batches, but copy every index batch to
    the GPU. `meta` tensors stand in for a device other than the CPU."""
    asked = []
    real_batches = EpochBatches.batches
    monkeypatch.setattr(EpochBatches, "batches", lambda self, device=None: asked.append(device) or real_batches(self, device))
    tensors = (torch.zeros(100, 1, 28, 28, device="meta"), torch.zeros(100, dtype=torch.long, device="meta"))
    batches = list(TensorBatchLoader(tensors, EpochBatches(100, 32, shuffle=True)))
    assert asked == [torch.device("meta")] and len(batches) == 4
    assert all(t.device.type == "meta" for batch in batches for t in batch)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(synthetic_data_dir, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match=rf"data\.device={device} is invalid: this machine has 0 CUDA .*auto, cpu, cuda or cuda:N"):
        MNISTDataModule(str(synthetic_data_dir), download=False, device=device)


def test_one_named_gpu_for_every_ddp_process_is_a_clear_error(synthetic_data_dir):
    """Under DDP, cuda:N would load every process's copy of the data onto GPU N (checked without a GPU here)."""
    from types import SimpleNamespace

    datamodule = MNISTDataModule(str(synthetic_data_dir), download=False, device="auto")
    datamodule.hparams.device = "cuda:1"  # the constructor checked it against this machine's (absent) GPUs
    datamodule.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    with pytest.raises(UserInputError, match=r"data\.device=cuda:1 would put the data of all 2 processes on that one GPU"):
        datamodule.data_device()
    datamodule.trainer.world_size = 1
    assert datamodule.data_device() == torch.device("cuda", 1)  # one process: the named GPU, as asked


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_is_a_clear_error(synthetic_data_dir, device):
    with pytest.raises(UserInputError, match=r"data\.device=.* is invalid: it must be auto, cpu, cuda or cuda:N"):
        MNISTDataModule(str(synthetic_data_dir), download=False, device=device)
