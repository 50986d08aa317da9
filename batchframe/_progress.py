"""The progress bar of ``BatchJob.wait``: rows settled, batches by status, ETA.

Uses ``tqdm.auto`` (a widget in notebooks, text in terminals). It is off when
``progress=False``, and by default (``progress=None``) unless stderr is a terminal or the
code runs in a Jupyter kernel.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from batchframe._manifest import STATUSES

__all__ = ["Progress", "progress_enabled"]

_SHORT = {
    "pending": "wait",
    "uploaded": "wait",
    "submitting": "submit",
    "validating": "valid",
    "in_progress": "run",
    "finalizing": "finalizing",
    "cancelling": "cancelling",
    "completed": "done",
    "expired": "expired",
    "cancelled": "cancelled",
    "failed": "failed",
}


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_enabled(progress: bool | None) -> bool:
    """Resolve ``progress=None`` to on (terminal or notebook) or off."""
    if progress is not None:
        return bool(progress)
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or _in_notebook()


def _tqdm_class() -> Any:
    """The notebook widget bar where ipywidgets can draw it, else the text bar.

    ``tqdm.auto`` would warn ("IProgress not found") in a kernel without ipywidgets;
    the text bar renders fine in notebooks too.
    """
    import importlib.util

    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm


class Progress:
    """A rows bar with batches by status in its postfix; a no-op when disabled."""

    def __init__(self, total: int, *, enabled: bool, description: str = "batchframe") -> None:
        self._bar: Any = None
        if enabled:
            self._bar = _tqdm_class()(total=total, unit="row", desc=description, dynamic_ncols=True)

    def update(self, *, ok: int, failed: int, statuses: Iterable[str]) -> None:
        """Show ``ok + failed`` rows settled and the count of batches per status."""
        if self._bar is None:
            return
        counts = Counter(_SHORT.get(s, s) for s in statuses)
        order = {_SHORT[s]: i for i, s in enumerate(STATUSES)}
        parts = [f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: order.get(kv[0], 99))]
        self._bar.set_postfix_str(
            f"ok={ok} failed={failed} | batches: " + " ".join(parts), refresh=False
        )
        done = ok + failed
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        else:
            self._bar.refresh()

    def close(self) -> None:
        """Close the bar (leaves the final line on screen)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
