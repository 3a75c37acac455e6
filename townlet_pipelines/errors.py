"""The errors a user can cause or fix, and how both entry points tell them: one line naming the file or field.

A project error (bad config, a usage the user can fix such as a bad `--seeds` or an unknown strategy, a damaged
dataset or checkpoint, a state file, a promotion the rules refuse), the operating system's (a full disk, a
missing file) and a damaged safetensors file reach the CLI user as `townlet: error: <sentence>` with exit status
2, and a Dagster step as a `Failure` carrying the same sentence. Anything else is a programming error and keeps
its traceback, a bare `ValueError` included (a shape mismatch deep in numpy is not the user's to fix): code that
refuses what a user asked for raises `UsageError` (config.py), a `ValueError` the user can fix.
"""

from __future__ import annotations

from townlet_pipelines.config import ConfigError, UsageError
from townlet_pipelines.data.manifest import DatasetError
from townlet_pipelines.data.promotion import PromotionError
from townlet_pipelines.data.state_file import StateFileError
from townlet_pipelines.training.torch_support import TorchNotAvailableError, TrainingError


def user_errors() -> tuple[type[BaseException], ...]:
    return (ConfigError, UsageError, DatasetError, OSError, TrainingError, StateFileError, PromotionError,
            TorchNotAvailableError)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, user_errors()) or type(error).__name__ == "SafetensorError"


FULL_DISK = " (the disk is full: free space and run again; nothing already written was changed)"


def one_line(error: BaseException) -> str:
    """The error's message on one line (a config error keeps its own layout: one line per field)."""
    if isinstance(error, ConfigError):
        return str(error)
    text = " ".join(str(error).split()) or type(error).__name__
    if type(error).__name__ == "SafetensorError":  # one the training code did not name (it names its files)
        if "os error 28" in text:
            return text + FULL_DISK
        text = f"damaged checkpoint file ({text}); re-create it or restore it from its release copy"
    if isinstance(error, OSError) and error.errno == 28:
        text += FULL_DISK
    return text
