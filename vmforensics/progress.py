"""Progress for long work: tqdm.auto bars (a widget in Jupyter, a bar in a terminal), a callback,
or silence. The library itself never prints; the bars go to stderr and can be switched off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class ProgressUpdate:
    """What a progress callback receives: the file in flight and the running totals."""

    file: str
    file_done: int
    file_total: int | None
    done: int
    total: int | None


ProgressCallback = Callable[[ProgressUpdate], None]
ProgressOption = bool | ProgressCallback | None


class Progress:
    """Overall and per-file progress. ``Progress(True)`` shows bars, ``Progress(fn)`` calls ``fn``."""

    def __init__(
        self, option: ProgressOption = True, *, total: int | None = None, description: str = "acquire"
    ):
        self._callback = option if callable(option) else None
        self._bars = option is True
        self.total = total
        self.done = 0
        self._file = ""
        self._file_done = 0
        self._file_total: int | None = None
        self._overall: Any = None
        self._current: Any = None
        if self._bars:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self._overall = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bars:
            self._overall.total = total
            self._overall.refresh()

    def start_file(self, name: str, total: int | None, initial: int = 0) -> None:
        self._file, self._file_done, self._file_total = name, initial, total
        self.done += initial
        if self._bars:
            if self._current is not None:
                self._current.close()
            self._current = self._tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name[-40:],
                leave=False,
            )
            self._overall.update(initial)
        self._emit()

    def advance(self, count: int) -> None:
        self._file_done += count
        self.done += count
        if self._bars:
            self._current.update(count)
            self._overall.update(count)
        self._emit()

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(
                ProgressUpdate(self._file, self._file_done, self._file_total, self.done, self.total)
            )

    def close(self) -> None:
        if self._bars:
            if self._current is not None:
                self._current.close()
            self._overall.close()
