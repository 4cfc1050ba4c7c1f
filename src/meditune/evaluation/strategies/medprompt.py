"""kNN few-shot and Medprompt plans: retrieved CoT exemplars, optionally over shuffled option orders.

knn-fewshot = 1 run, original order, k nearest solved training items as CoT exemplars (least similar first).
medprompt   = the same exemplars + `runs` option orders (choice shuffling; labels stay A..), one answer per
              run mapped back to the original options, then a majority vote (vote.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meditune.records import MCQItem

from .cot_bank import BankEntry
from .knn import EmbedFn, KNNIndex, retrieve
from .shuffle import option_orders


@dataclass
class Run:
    """One way of asking an item: the option order shown and the CoT exemplars before it."""

    order: list[int]
    shots: list[tuple[MCQItem, str]] = field(default_factory=list)
    neighbours: list[tuple[str, float | None]] = field(default_factory=list)  # (exemplar id, cosine) for logs


def knn_runs(items: Sequence[MCQItem], bank: Sequence[BankEntry], embed: EmbedFn, *, k: int, runs: int = 1,
             shuffle: bool = False, seed: int = 0, keep_original_first: bool = True,
             index: KNNIndex | None = None, cache_dir: str | Path | None = None,
             model_id: str = "") -> list[list[Run]]:
    """For every item, its runs: the k nearest bank entries as exemplars, in 1 or `runs` option orders."""
    index = index or KNNIndex.build([e.item for e in bank], embed, cache_dir=cache_dir, model_id=model_id)
    found = retrieve(index, items, embed, k)
    plans = []
    for item, nbrs in zip(items, found, strict=True):
        shots = [(bank[i].item, bank[i].rationale) for i, _ in nbrs]
        info = [(bank[i].item.id, round(sim, 4)) for i, sim in nbrs]
        identity = list(range(len(item.options)))
        orders = (option_orders(len(item.options), runs, seed=seed, item_id=item.id,
                                keep_original_first=keep_original_first) if shuffle else [identity] * runs)
        plans.append([Run(order, shots, info) for order in orders])
    return plans
