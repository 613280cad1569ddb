"""Sets of sequence numbers kept as sorted, disjoint half-open ranges.

A scan's accounting must cost what was *received*, never what a header claims: a ``scan_end`` with
``n_messages`` of 2**53, or one huge ``seq``, must not make the service materialize the numbers in
between (``docs/protocol.md`` §6). ``SeqRanges`` stores ``[start, stop)`` runs: an in-order scan is one
run however long it is, and the seqs that never arrived are the gaps between runs, reported as ranges.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class SeqRanges:
    """A set of non-negative integers as sorted disjoint ``[start, stop)`` runs (adjacent runs merged)."""

    __slots__ = ("_starts", "_stops", "_count")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, seq: int) -> bool:
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq < self._stops[i]

    def __iter__(self) -> Iterator[int]:
        for start, stop in zip(self._starts, self._stops):
            yield from range(start, stop)

    @property
    def runs(self) -> int:
        """How many runs are stored (the memory this set costs)."""
        return len(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._stops))

    def count_below(self, limit: int) -> int:
        """How many seqs are below ``limit``: O(runs)."""
        return sum(min(stop, limit) - start for start, stop in zip(self._starts, self._stops) if start < limit)

    def max(self, default: int = -1) -> int:
        return self._stops[-1] - 1 if self._stops else default

    def add(self, seq: int) -> bool:
        """Add ``seq``; False when it was already in the set. O(log runs), O(1) for in-order seqs."""
        starts, stops = self._starts, self._stops
        if stops and seq == stops[-1]:  # the common case: the next seq of an in-order scan
            stops[-1] = seq + 1
            self._count += 1
            return True
        i = bisect_right(starts, seq) - 1  # the run starting at or before seq
        if i >= 0 and seq < stops[i]:
            return False
        joins_left = i >= 0 and stops[i] == seq
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            stops[i] = stops[i + 1]
            del starts[i + 1], stops[i + 1]
        elif joins_left:
            stops[i] = seq + 1
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            stops.insert(i + 1, seq + 1)
        self._count += 1
        return True

    def discard_from(self, limit: int) -> list[tuple[int, int]]:
        """Remove every seq >= ``limit``; returns the removed runs."""
        starts, stops = self._starts, self._stops
        i = bisect_right(starts, limit - 1)  # runs [i:] start at or beyond limit
        removed = list(zip(starts[i:], stops[i:]))
        del starts[i:], stops[i:]
        if starts and stops[-1] > limit:
            removed.insert(0, (limit, stops[-1]))
            stops[-1] = limit
        self._count -= sum(b - a for a, b in removed)
        return removed

    def gaps(self, stop: int, *, also: SeqRanges | None = None) -> list[tuple[int, int]]:
        """The runs of ``range(stop)`` in neither this set nor ``also``: O(runs), never O(stop)."""
        covered = sorted(self.ranges() + (also.ranges() if also is not None else []))
        out: list[tuple[int, int]] = []
        at = 0
        for start, end in covered:
            if start >= stop:
                break
            if start > at:
                out.append((at, start))
            at = max(at, end)
        if at < stop:
            out.append((at, stop))
        return out


def count_of(runs: list[tuple[int, int]]) -> int:
    return sum(stop - start for start, stop in runs)


def first_of(runs: list[tuple[int, int]], limit: int) -> list[int]:
    """The first ``limit`` numbers of ``runs``, as a list (for messages that list a few seqs)."""
    out: list[int] = []
    for start, stop in runs:
        out.extend(range(start, min(stop, start + limit - len(out))))
        if len(out) >= limit:
            break
    return out
