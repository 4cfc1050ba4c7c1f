"""Majority vote over parsed answers, with a deterministic tie-break.

Tie-break rule: among the answers with the most votes, the one that appears FIRST in the sample sequence wins
(sample order = run 0 sample 0, run 0 sample 1, ..., run 1 sample 0, ...). Unparseable samples (None) do not
vote; if no sample parsed, there is no prediction. Run 0 is the original option order (medprompt) or the first
sample (self-consistency), so ties fall back to the most "canonical" answer rather than to a letter bias.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Vote:
    """Result of a vote: the winner (None when nothing parsed), vote counts and whether a tie was broken."""

    winner: int | None
    counts: dict[int, int] = field(default_factory=dict)
    tie: bool = False

    @property
    def agreement(self) -> float:
        """Share of valid votes that went to the winner (0 when nothing parsed)."""
        total = sum(self.counts.values())
        return self.counts.get(self.winner, 0) / total if total and self.winner is not None else 0.0


def majority_vote(answers: Sequence[int | None]) -> Vote:
    """Most frequent non-None answer; ties go to the earliest of the tied answers in `answers`."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return Vote(None, {}, False)
    counts = Counter(valid)
    best = max(counts.values())
    tied = [a for a, c in counts.items() if c == best]
    first_seen = {a: valid.index(a) for a in tied}
    winner = min(tied, key=first_seen.__getitem__)
    return Vote(winner, dict(sorted(counts.items())), len(tied) > 1)
