"""Choice shuffling: show the options in another order (labels stay A, B, ...) and map answers back."""

from __future__ import annotations

import hashlib
import itertools
import math
import random

from meditune.records import MCQItem


def item_rng(seed: int, item_id: str, salt: str = "shuffle") -> random.Random:
    """A random generator that depends only on (seed, item id): stable across runs and processes."""
    digest = hashlib.sha256(f"{salt}:{seed}:{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def option_orders(n_options: int, runs: int, *, seed: int, item_id: str,
                  keep_original_first: bool = True) -> list[list[int]]:
    """`runs` orders of option indices; order[i] is the original index shown at position i.

    Orders are distinct while n_options! allows (then they repeat cyclically). With keep_original_first the
    first run shows the original order, which is also the run that wins vote ties (see vote.py).
    """
    if n_options < 1 or runs < 1:
        raise ValueError(f"need n_options >= 1 and runs >= 1, got {n_options}, {runs}")
    identity = list(range(n_options))
    total = math.factorial(n_options)
    rng = item_rng(seed, item_id)
    orders: list[list[int]] = [identity] if keep_original_first else []
    seen = {tuple(o) for o in orders}
    if total <= 24 and runs - len(orders) >= total - len(seen):
        # Few permutations: take all remaining ones in a seeded random order, then cycle.
        rest = [list(p) for p in itertools.permutations(identity) if p not in seen]
        rng.shuffle(rest)
        pool = orders + rest
        return [pool[i % len(pool)] for i in range(runs)]
    while len(orders) < runs:
        perm = identity[:]
        rng.shuffle(perm)
        if tuple(perm) not in seen:
            seen.add(tuple(perm))
            orders.append(perm)
    return orders


def shuffled_item(item: MCQItem, order: list[int]) -> MCQItem:
    """The item with options shown in `order`; `answer` is the gold option's new position."""
    if sorted(order) != list(range(len(item.options))):
        raise ValueError(f"order {order} is not a permutation of {len(item.options)} options")
    return item.model_copy(update={"options": [item.options[j] for j in order],
                                   "answer": order.index(item.answer)})


def to_original(shown_index: int | None, order: list[int]) -> int | None:
    """Map an answer given on the shuffled item (position) back to the original option index."""
    return None if shown_index is None else order[shown_index]
