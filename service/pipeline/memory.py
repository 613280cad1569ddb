"""The service's memory budget: one ledger of what every scan may hold (``memory_budget_bytes``).

A scan's maps and results are reserved in full when its ``scan_start`` is accepted, from what its
bindings say they can grow to (``Binding.footprint``), and released when the scan's record is
dropped (evicted from the retained closed scans, or refused). A ``scan_start`` whose reservation
does not fit, even after dropping retained closed scans, is refused with the figures. The numbers
are the arrays' sizes: NumPy allocates zeroed maps lazily, so the resident memory of a scan grows as
its lines arrive and never beyond its reservation (``docs/operations.md``, "Memory").
"""

from __future__ import annotations


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class MemoryLedger:
    """Reservations against one budget, by key (a scan id); ``peak`` is the most ever reserved."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.peak = 0
        self._held: dict[str, int] = {}

    @property
    def free(self) -> int:
        return self.budget - self.used

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.budget

    def reserve(self, key: str, nbytes: int) -> None:
        """Reserve ``nbytes`` for ``key``; MemoryError (nothing reserved) when it does not fit."""
        if key in self._held:
            raise ValueError(f"{key!r} already holds a reservation")
        if not self.fits(nbytes):
            raise MemoryError(f"needs {mib(nbytes)}; {mib(self.free)} of the {mib(self.budget)} budget are free")
        self._held[key] = nbytes
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def release(self, key: str) -> int:
        """Give back what ``key`` holds (0 if nothing)."""
        nbytes = self._held.pop(key, 0)
        self.used -= nbytes
        return nbytes
