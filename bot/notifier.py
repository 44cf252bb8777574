"""The wake-up call between the two sides of one process: the handlers store work, the
run-poller of the same process looks for it at once instead of at its next poll."""

from __future__ import annotations

from collections.abc import Callable


class WakeUp:
    """Created once in `build()`; the handlers' side calls it, the poller listens."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def __call__(self) -> None:
        for callback in self._listeners:
            callback()
