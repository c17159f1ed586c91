"""Old import paths kept for one release: each is the new module itself, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make ``import old`` give module ``new`` (the same object), warning that ``old`` is deprecated."""
    warnings.warn(
        f"{old} moved to {new}; the old path goes away in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
