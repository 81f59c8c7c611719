"""Progress bars for long loops: a live bar for a reader, one summary line in an executed book.

``book/execute.py`` sets ``DDSS_PROGRESS=summary`` for the chapters it runs with papermill, so an
executed page carries one line per loop ("DDSS ggdm K=5: 100 steps in 42 s") instead of the
dozens of refreshes a bar writes into a stored output. ``DDSS_PROGRESS=off`` prints nothing; unset
(or ``bar``), the plain-text tqdm bar is shown (no widget dependency).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

from tqdm import tqdm

MODES = ("bar", "summary", "off")


def mode() -> str:
    """The current mode from ``DDSS_PROGRESS`` (default ``"bar"``)."""
    m = os.environ.get("DDSS_PROGRESS", "bar").strip().lower() or "bar"
    if m not in MODES:
        raise ValueError(f"DDSS_PROGRESS must be one of {list(MODES)}, got {m!r}")
    return m


class _Quiet:
    """The subset of tqdm's interface the library uses, doing nothing but counting."""

    def __init__(self, total, initial, desc):
        self.total, self.n, self.initial, self.desc = total, initial, initial, desc
        self.t0 = time.perf_counter()

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        self.postfix = kwargs

    def close(self):
        pass


@contextlib.contextmanager
def bar(*, total: int, initial: int = 0, desc: str = ""):
    """A progress bar over ``total`` steps (resumed runs start at ``initial``); see the module docstring."""
    m = mode()
    if m == "bar":
        with tqdm(total=total, initial=initial, desc=desc, mininterval=2.0, leave=False, file=sys.stderr) as b:
            yield b
        return
    q = _Quiet(total, initial, desc)
    yield q
    if m == "summary":
        done = q.n - q.initial
        resumed = f" (resumed at {q.initial})" if q.initial else ""
        print(f"{desc}: {done} of {total} steps{resumed} in {time.perf_counter() - q.t0:.0f} s", flush=True)
