"""One progress view for a batch, fed by worker events: a tqdm.auto bar (bytes over every member,
with a VM count), a live HTML table of the members in Jupyter, or a callback ``fn(vm, update)``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from vmforensics.progress import ProgressUpdate

BatchCallback = Callable[[str, ProgressUpdate], None]
TABLE_INTERVAL = 0.5  # seconds between redraws of the Jupyter table


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto shows widgets too)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class BatchView:
    """Member states and byte counts, shown as one bar, a live table, or passed to a callback."""

    def __init__(self, option: bool | BatchCallback, names: Sequence[str]):
        self._lock = threading.Lock()
        self._callback = option if callable(option) else None
        self.rows: dict[str, dict[str, Any]] = {
            name: {"state": "waiting", "worker": "", "done": 0, "total": None} for name in names
        }
        self._bar: Any = None
        self._display: Any = None
        self._drawn = 0.0
        if option is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"acquire {len(names)} VMs")
            if in_jupyter():
                from IPython.display import HTML, display

                self._display = display(HTML(self.html()), display_id=True)

    def started(self, name: str, worker: str) -> None:
        with self._lock:
            self.rows[name].update(state="running", worker=worker)
        self._redraw()

    def progress(self, name: str, update: ProgressUpdate) -> None:
        with self._lock:
            self.rows[name].update(done=update.done, total=update.total)
            if self._bar is not None:
                self._bar.total = sum(r["total"] or 0 for r in self.rows.values()) or None
                self._bar.update(sum(r["done"] for r in self.rows.values()) - self._bar.n)
        if self._callback is not None:
            self._callback(name, update)
        self._redraw()

    def finished(self, name: str, ok: bool, state: str | None = None) -> None:
        with self._lock:
            self.rows[name]["state"] = state or ("sealed" if ok else "failed")
            if self._bar is not None:
                states = [r["state"] for r in self.rows.values()]
                self._bar.set_postfix_str(
                    f"{states.count('sealed')}/{len(states)} sealed, {states.count('failed')} failed"
                )
        self._redraw(force=True)

    def html(self) -> str:
        """The members as a table: state, worker, bytes done of the total."""
        from vmforensics.survey.html import sortable_table

        with self._lock:
            rows = [[n, r["state"], r["worker"], r["done"], r["total"]] for n, r in self.rows.items()]
        return sortable_table(["VM", "state", "worker", "bytes done", "bytes total"], rows)

    def _redraw(self, force: bool = False) -> None:
        if self._display is None or (not force and time.monotonic() - self._drawn < TABLE_INTERVAL):
            return
        from IPython.display import HTML

        self._drawn = time.monotonic()
        self._display.update(HTML(self.html()))

    def close(self) -> None:
        self._redraw(force=True)
        if self._bar is not None:
            self._bar.close()
