"""The time budget of a run (``training.time_budget_s``): seconds of the training loop on a clock.

Only the training loop counts (steps and validations, not data loading or the final test); the
seconds used are stored in the checkpoints (``budget_used_s``) and continue on ``--resume``.
Clocks: ``wall`` (``time.perf_counter``) or ``cpu`` (``time.process_time``: CPU time of all threads
of the process, far less sensitive to other jobs on a shared machine).
The trainer samples the clock once per optimizer step (:meth:`TimeBudget.sample`); the cosine decay and
the stop decision of that step read the same sample, so the step that ends the run is the step whose
learning rate reached the schedule's floor.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

__all__ = ["CLOCKS", "TimeBudget"]

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class TimeBudget:
    """``seconds`` (None: no budget) on ``clock`` (a name of :data:`CLOCKS` or a function), of which
    ``used`` were spent by earlier invocations of the run."""

    def __init__(self, seconds: Optional[float], clock: Union[str, Callable[[], float]] = "wall", used: float = 0.0):
        self.seconds = float(seconds) if seconds else None
        self._clock = CLOCKS[clock] if isinstance(clock, str) else clock
        self._used = float(used)
        self._start: Optional[float] = None
        self._sample: Optional[float] = None

    def start(self) -> None:
        """Start counting (the training loop begins)."""
        self._start, self._sample = self._clock(), None

    def stop(self) -> None:
        """Stop counting (the loop ended); :meth:`used` stays fixed afterwards."""
        self._used, self._start, self._sample = self.used(), None, None

    def used(self) -> float:
        """Seconds used so far, earlier invocations included."""
        if self._start is None:
            return self._used
        return self._used + self._clock() - self._start

    def sample(self) -> None:
        """Read the clock once for this step: :meth:`fraction` and :meth:`spent` return this reading
        until the next sample (or :meth:`start`/:meth:`stop`)."""
        self._sample = self.used()

    def _seen(self) -> float:
        return self._sample if self._sample is not None else self.used()

    def fraction(self) -> float:
        """Fraction of the budget used (drives the cosine learning-rate decay)."""
        return self._seen() / self.seconds

    def spent(self) -> bool:
        """True once a budget is set and used up."""
        return self.seconds is not None and self._seen() >= self.seconds
