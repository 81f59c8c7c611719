"""Where a run writes: the build directory, the model cache, the per-chapter results.

``DDSS_BUILD_DIR`` sets the build directory; otherwise it is ``_build/`` at the
repository root (the nearest parent holding ``_toc.yml``), and outside a checkout
(e.g. in Colab) ``~/.cache/ddss_lite``.
"""
from __future__ import annotations

import os
import pathlib


def build_dir() -> pathlib.Path:
    env = os.environ.get("DDSS_BUILD_DIR")
    if env:
        path = pathlib.Path(env)
    else:
        here = pathlib.Path.cwd().resolve()
        root = next((p for p in (here, *here.parents) if (p / "_toc.yml").is_file()), None)
        path = root / "_build" if root is not None else pathlib.Path.home() / ".cache" / "ddss_lite"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> pathlib.Path:
    """Trained models and cached features, keyed by a hash of their config."""
    path = build_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> pathlib.Path:
    """One JSON file of tables per chapter."""
    path = build_dir() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
