"""What happens to a corrupt or inconsistent sample: the documented bad-sample policy.

* ``skip`` (default): the problem is logged as a warning naming the file (once per file and reason), counted,
  and written into the run's JSON output. The smallest unusable unit goes: an empty instance mask drops that
  instance; an unreadable file, a size mismatch or a sample left without instances drops the sample (training
  then takes the next sample of its shuffled order, so batches keep their size).
* ``raise``: the first problem stops the run with a ``BadSample`` error naming the file and the reason.

Readers raise ``BadSample`` while loading; training data workers catch it and hand the report back to the main
process, which applies the policy, so a bad file never crashes a worker.
"""

from __future__ import annotations

import logging
from collections import Counter

from .sample import BadSample

POLICIES = ("skip", "raise")
log = logging.getLogger("qsam2_ext.data")


class BadSampleLog:
    """Applies the policy to reported problems and keeps a count per ``(source, reason)``."""

    def __init__(self, policy: str = "skip"):
        if policy not in POLICIES:
            raise ValueError(f"bad-sample policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.counts: Counter = Counter()

    def report(self, source: str, reason: str) -> None:
        if self.policy == "raise":
            raise BadSample(source, reason)
        if (source, reason) not in self.counts:
            log.warning("skipping bad sample %s: %s", source, reason)
        self.counts[(source, reason)] += 1

    def report_all(self, problems) -> None:
        for source, reason in problems:
            self.report(source, reason)

    def __len__(self) -> int:
        return len(self.counts)

    def to_json(self) -> list[dict]:
        return [{"source": s, "reason": r, "count": c} for (s, r), c in sorted(self.counts.items())]

    def load_json(self, entries: list[dict]) -> None:
        """Restore the counts of a resumed run (already logged then)."""
        for e in entries:
            self.counts[(e["source"], e["reason"])] += e["count"]
