"""Lightning's messages that say nothing to a user of this project, printed in every run otherwise: an advertisement
for a cloud logger, a note that the configured model summary replaces Lightning's default one, deprecation warnings
about Lightning's own use of torch (nothing a user can act on), and the model summary's claim that it cannot size a
mixed-precision model (whose weights are float32, the size it then assumes). Also its warning that the checkpoint
folder is not empty, which here comes only from a resume continuing in its run's folder (a new run is refused there),
and its note on the checkpoint saved after Ctrl-C or SIGTERM ("An StopRequested was raised with message: ..."), which
the run's own message says properly, with the command that resumes."""

from __future__ import annotations

import logging
import warnings

NOISE = ("💡 Tip:", "Trainer already configured with model summary callbacks")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith(NOISE) or message.startswith("An ") and " was raised with message: " in message)


_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Silence those messages for the rest of the process (calling it again changes nothing)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_FILTER)  # a filter is added once
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    warnings.filterwarnings("ignore", message=r"Precision [a-z0-9]+-mixed is not supported by the model summary")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
