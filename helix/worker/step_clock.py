"""How long the device spent on a step's phases (drafting, the target's pass).

On CUDA the host only queues work, so its clock says when a phase was
launched, not what it cost: events recorded on the stream time what the
device did. Elsewhere work runs as it is issued and the host clock measures it.
"""

from __future__ import annotations

import time

import torch


class StepClock:
    def __init__(self, device: torch.device):
        self._on_stream = device.type == "cuda"
        self._marks: list[torch.cuda.Event | float] = []
        self.mark()

    def mark(self) -> None:
        """End the current phase here (on the stream: after everything queued so far)."""
        if self._on_stream:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def phases(self) -> list[float]:
        """Seconds of each phase; waits until the device has passed the last mark."""
        marks = self._marks
        if not self._on_stream:
            return [float(end) - float(start) for start, end in zip(marks, marks[1:])]
        marks[-1].synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in zip(marks, marks[1:])]
