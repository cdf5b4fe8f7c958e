"""Stop at a step boundary on Ctrl-C or SIGTERM, so the saved state is one a resume can trust.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. Mid-forward, the
BatchNorm layers already passed have folded this batch into their running statistics although
the step never completes; saving then records a model that no uninterrupted run ever had.
While training, the first Ctrl-C (or a SIGTERM from a scheduler) therefore only raises a flag:
the current step finishes, the loop stops before the next one and saves. A second Ctrl-C aborts
at once without saving (the last saved state is kept).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType


class GracefulStop:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of raising (main thread
    only; elsewhere it does nothing and signals behave as usual)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.requested: str | None = None  # name of the signal that asked to stop
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.log(
            f"\n{self.requested}: finishing the current step, then saving the state "
            "(Ctrl-C again aborts without saving)"
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
