"""The one place that decides whether torch is importable, with an error that says what to do."""

from __future__ import annotations

import importlib


class TorchNotAvailableError(ImportError):
    """PyTorch is needed for training but is not installed."""


class TrainingError(RuntimeError):
    """Training stopped (a non-finite loss, a mismatched checkpoint); nothing was written from it."""


def require_torch():
    try:
        return importlib.import_module("torch")
    except ImportError as error:
        raise TorchNotAvailableError(
            "training needs PyTorch, which is not installed: `pip install torch` (CPU builds work; "
            f"this project pins torch==2.13.0 in constraints.txt) [{error}]"
        ) from None
