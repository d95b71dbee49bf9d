"""Rebuild a model from one of our checkpoints: the whole classifier (Lightning), or for inference only its
network (no Lightning to import)."""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from src.models.checkpoint_file import CheckpointError, read_checkpoint

if TYPE_CHECKING:
    from torch import nn

    from src.models.classifier import DigitClassifier


# The settings of the classifier base itself, not of its network (a test keeps this in step with its constructor).
CLASSIFIER_SETTINGS = frozenset({"optimizer", "scheduler", "label_smoothing", "compile", "channels_last",
                                 "cuda_graph"})


def model_class(class_path: object) -> type[DigitClassifier]:
    """The classifier class a checkpoint names (`class_path`, as read from the file: not always a string)."""
    from src.models.classifier import DigitClassifier

    if not isinstance(class_path, str):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which is not a class path.")
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("src.models."):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which is not one of src.models.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # The module, or a module above it, does not exist (a class defined inside a function names one); else the
        # module exists but something it imports does not: a real error.
        if not (err.name and f"{module_name}.".startswith(f"{err.name}.")):
            raise
        module = None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DigitClassifier)):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which does not exist in this version.")
    return cls


_ADVICE = "see \"Add a model of your own\" in README.md"


def check_model_class(target: str) -> None:
    """Before the model is built: a class that is not a DigitClassifier is refused as such, not for the settings it
    does not take (model=mlp model._target_=torch.nn.Linear); one that cannot be imported, in one line (the traceback
    of an error in its module: HYDRA_FULL_ERROR=1)."""
    from hydra.utils import get_object

    from src.errors import UserInputError
    from src.models.classifier import DigitClassifier

    if not target:
        return  # no class named: build_group says so
    hydras_log = logging.getLogger("hydra.utils")  # which would log the reason as an error, before the message
    level = hydras_log.level
    hydras_log.setLevel(logging.CRITICAL)
    try:
        found = get_object(target)
    except Exception as err:
        reason = " ".join(str(err).split())
        raise UserInputError(f"model._target_={target} cannot be imported: {reason}") from err
    finally:
        hydras_log.setLevel(level)
    if isinstance(found, type) and not issubclass(found, DigitClassifier):  # a function making one: built first
        raise _not_a_classifier(target)


def _not_a_classifier(target: str) -> Exception:
    from src.errors import UserInputError

    return UserInputError(
        f"model._target_={target} is not a DigitClassifier (src/models/classifier.py), which gives a model its loss, "
        f"metrics, optimizer settings and checkpoints: subclass it ({_ADVICE}).")


def check_trainable(model: object, target: str) -> None:
    """Refuse, before training, a model whose checkpoints could not be used: they name the model's class, which
    model_class must find again (a subclass of DigitClassifier, defined at the top of a module under src/models/)."""
    from src.errors import UserInputError
    from src.models.classifier import DigitClassifier

    if not isinstance(model, DigitClassifier):
        raise _not_a_classifier(target)
    class_path = model.class_path
    try:
        found = model_class(class_path) is type(model)
    except CheckpointError:
        found = False
    if not found:
        raise UserInputError(
            f"model._target_={target} makes a {class_path}, which its checkpoints could not be loaded as: src.eval, "
            "src.predict and a resume load a model class only from the top level of a module under src/models/. "
            f"Define it there ({_ADVICE}).")


def classifier_like(checkpoint: dict) -> DigitClassifier:
    """A new classifier of the checkpoint's class and hyperparameters; its weights are not loaded. Not compiled, for
    testing and predicting: model.compile is for speed in training, and a machine without a C++ compiler (a laptop
    testing a GPU run's checkpoint) cannot compile at all."""
    cls = model_class(checkpoint["model_class"])
    settings = checkpoint["hyper_parameters"]
    if isinstance(settings, dict) and settings.get("compile"):
        settings = {**settings, "compile": False}
    try:
        return cls(**settings)
    except TypeError as err:  # a setting this version's class does not take
        raise CheckpointError(
            f"checkpoint's {checkpoint['model_class']} settings do not fit this version of it ({err}). "
            "Use the version of this project that wrote the checkpoint."
        ) from err


def load_classifier(path: str | Path, checkpoint: dict | None = None) -> tuple[DigitClassifier, dict]:
    """(model in eval mode on CPU, the raw checkpoint dict) from a checkpoint written by training; `checkpoint`
    is that file's content when it has been read already."""
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    model = classifier_like(checkpoint)
    _load_weights(model, checkpoint["state_dict"], path)
    best_so_far = (checkpoint.get("current_model_state") or {}).get("val_acc_best.max_value")
    if model.best_val_acc() is None and best_so_far is not None:
        # With weight averaging, state_dict is the averaged copy's, whose metric never saw a validation: the training
        # model's (kept beside it to resume) holds the best validation accuracy.
        model.val_acc_best.max_value = best_so_far.clone()
    return model.eval(), checkpoint


def checkpoint_record(path: str | Path, checkpoint: dict, model: DigitClassifier) -> dict:
    """What a test of a checkpoint alone (src.eval, src.train train=false) records of it in metrics.json: the file,
    its class and epoch, and the best validation accuracy of its training up to it."""
    record = {"checkpoint": str(Path(path).expanduser().resolve()), "model_class": checkpoint["model_class"],
              "checkpoint_epoch": checkpoint.get("epoch")}
    if model.best_val_acc() is not None:
        record["val/acc_best"] = model.best_val_acc()
    return record


def load_network(path: str | Path) -> tuple[nn.Module, dict]:
    """(network in eval mode on CPU, the raw checkpoint dict): the classifier's network alone, which maps images to
    logits as the classifier does, built without importing Lightning. A class whose network is not among
    NETWORK_BUILDERS, or a checkpoint whose settings differ from what this version's network and classifier take,
    gets the whole classifier instead (which takes defaults for missing settings and refuses unknown ones)."""
    from src.models.networks import NETWORK_BUILDERS

    checkpoint = read_checkpoint(path)
    build = NETWORK_BUILDERS.get(checkpoint["model_class"])
    settings = checkpoint["hyper_parameters"]
    if not build or not isinstance(settings, dict):
        return load_classifier(path, checkpoint)
    takes = inspect.signature(build).parameters
    lacking = any(name not in settings for name, p in takes.items() if p.default is p.empty)
    if lacking or set(settings) - set(takes) - CLASSIFIER_SETTINGS:
        return load_classifier(path, checkpoint)
    network = build(**{name: value for name, value in settings.items() if name in takes})
    prefix = "net."  # the classifier's attribute holding its network
    _load_weights(network, {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items()
                            if key.startswith(prefix)}, path)
    return network.eval(), checkpoint


def _load_weights(module: nn.Module, state_dict: dict, path: str | Path) -> None:
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as err:  # weights of another shape or name than its settings say
        # torch's first line only says "Error(s) in loading state_dict for MLP:"; the next names the first misfit.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise CheckpointError(f"ckpt_path={path}: its weights do not fit the network its settings describe "
                              f"({reason.rstrip('.')}). It was altered or damaged; use another checkpoint.") from err
