"""How loaded the engine is, and the one rule that says whether new audio can be through it in time.

The engine's two stages (speech detection, then embedding) each have a backlog of padded samples and a
recent throughput. A ``Load`` is a snapshot of both: the in-process engine takes it from its batchers,
a front-end worker of a multi-process service reads it from the inference process's board
(``app.engine.board``). Admission asks it before a request's audio is decoded, the engine again with
the real audio; both through ``refuse_unless_in_time``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.core.errors import AudioTooLarge, DeadlineExceeded, Overloaded


@dataclass(frozen=True, slots=True)
class Load:
    speech_backlog: float  # padded samples queued or running in speech detection
    speech_rate: float  # padded samples per second it gets through
    embed_backlog: float
    embed_rate: float
    request_samples: float  # running average of the samples one recording brings

    def expected_wait_s(self, *, extra_samples: float = 0, extra_requests: float = 0) -> float:
        """Seconds until the engine would be through its queues (speech detection, then embedding) plus
        ``extra_samples`` of audio and ``extra_requests`` requests of average size."""
        coming = extra_samples + extra_requests * self.request_samples
        return (self.speech_backlog + coming) / self.speech_rate + (
            self.embed_backlog + coming
        ) / self.embed_rate

    def refuse_unless_in_time(
        self,
        samples: int,
        deadline: float,
        *,
        before_s: float = 0.0,
        queued_before_s: float = 0.0,
        extra_samples: float = 0,
        extra_requests: float = 0,
        budget_s: float | None = None,
    ) -> None:
        """Refuse at once audio that cannot be through inference by its deadline, instead of queueing
        it to time out: 413 ``audio_too_large`` when its own work alone needs more than a request may
        ever take (``budget_s``, the request timeout: it can never be served, send less audio per
        request), 504 when it needs more than is left of its deadline, 429 when the queue ahead (plus
        ``extra_samples`` / ``extra_requests`` on their way) makes it so. ``before_s``: the time the
        audio itself still needs before it reaches the engine (its decoding), ``queued_before_s``: the
        time it waits for that (others' decoding ahead of it)."""
        remaining = deadline - time.monotonic()
        alone = before_s + samples / self.speech_rate + samples / self.embed_rate
        if budget_s is not None and alone > budget_s:
            raise AudioTooLarge(
                f"this request's audio needs about {alone:.0f} s of decoding and inference here, more than "
                f"the {budget_s:g} s a request may take: send less audio per request",
                max_request_seconds=budget_s,
            )
        if alone > remaining:
            raise DeadlineExceeded(
                f"this audio needs about {alone:.1f} s of decoding and inference; "
                f"{max(0.0, remaining):.1f} s of the request's deadline are left"
            )
        wait = (
            before_s
            + queued_before_s
            + self.expected_wait_s(extra_samples=samples + extra_samples, extra_requests=extra_requests)
        )
        if wait > remaining:
            raise Overloaded(
                f"expected completion in {wait:.1f} s is past the deadline ({remaining:.1f} s left)",
                retry_after_s=wait - remaining,
            )
