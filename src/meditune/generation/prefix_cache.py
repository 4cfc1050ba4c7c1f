"""Prefix caching for batched generation: prompts that share a token prefix compute its KV cache once.

Why: many requests of one call share most of their prompt. Medprompt's shuffled runs of a question share its
few-shot exemplars (most of a ~1,900-token prompt, identical across the option orders and often across items),
k-shot prompts share their shots across items, the n samples of a request share the whole prompt. Prefill is
then most of the work, and computing a shared prefix once removes it.

How (one batch of rows, `plan_batch` then the backend's split prefill):
  plan         each row's shared length = its longest common token prefix with another prompt of the call or with
               a prefix already computed in this call (the store), capped so that one token is left, kept only when
               >= MIN_SHARED tokens. The suffix width S is chosen to balance padding against forwards; a row's
               prefix is its shared part, or len - S when its own part is longer than S.
  materialise  every distinct prefix that is not already held is run once, as one unpadded row, on top of the
               longest held KV it extends (a held prefix's KV sliced to q tokens is the KV of its first q tokens),
               and kept in the store when it starts with a shared part.
  assemble     the batch cache: row r's prefix KV right-aligned in a region of max(p) columns (zeros, masked,
               before it), then one forward of every row's suffix (the last len - p tokens, right-aligned in S
               columns: padding sits between prefix and suffix, masked) with position ids counted over the mask,
               so every token sees exactly the tokens and positions it sees in the unsplit prompt.
A batch takes this path only when it computes clearly fewer token slots than the plain padded prefill.

What is reused is computed by the same model on the same tokens and positions; only the matrix shapes differ
(one row instead of a padded batch), which can move logits in the last bits, as any change of batch layout can.
The store lives for one `generate` call (or a `TransformersBackend.keep_prefixes()` block), bounded in bytes,
least recently used first out, so outputs depend only on the requests of that call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

MIN_SHARED = 16  # shorter common prefixes (a chat template's first turn) are not worth a separate forward
DEFAULT_STORE_BYTES = 256 << 20  # prefix KV kept across the batches of one call
# The split path is taken when its token slots (prefixes computed + rows x suffix width) are at most this share of
# the plain path's (distinct prompts x longest prompt), counting each forward as FORWARD_COST more tokens (a
# forward's fixed cost and the lower efficiency of one-row products).
SPLIT_GAIN = 0.8
FORWARD_COST = 32


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (binary search over slice comparisons, in C)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(eq=False)
class PrefixKV:
    """The KV cache of a token prefix: per layer (keys, values), each [1, kv_heads, len(tokens), head_dim]."""

    tokens: list[int]
    layers: list[tuple[Any, Any]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


class PrefixStore:
    """Prefix KVs computed in this call, least recently used first out beyond `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_STORE_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, PrefixKV] = OrderedDict()
        self.bytes = 0

    def longest(self, tokens: Sequence[int]) -> tuple[PrefixKV | None, int]:
        """The held prefix sharing the most leading tokens with `tokens`, and how many."""
        best, best_len = None, 0
        for entry in self.entries.values():
            n = common_prefix_len(entry.tokens, tokens)
            if n > best_len:
                best, best_len = entry, n
        if best is not None:
            self.entries.move_to_end(id(best))
        return best, best_len

    def add(self, entry: PrefixKV) -> None:
        """Hold a new prefix (one that a held prefix already contains is not kept twice)."""
        if self.max_bytes <= 0 or entry.nbytes > self.max_bytes:
            return
        for key, old in list(self.entries.items()):
            n = common_prefix_len(old.tokens, entry.tokens)
            if n == len(entry.tokens):
                self.entries.move_to_end(key)
                return
            if n == len(old.tokens):  # the new one extends it
                self._drop(key)
        self.entries[id(entry)] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        self.bytes -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


@dataclass(eq=False)
class Materialise:
    """A prefix to compute: its tokens, run on top of the first `base_len` tokens of `base` (a held prefix, or one
    computed earlier in the same batch; None: from scratch)."""

    tokens: list[int]
    base: PrefixKV | Materialise | None = None
    base_len: int = 0
    keep: bool = True  # worth holding in the store (it starts with a prefix other prompts share)
    result: PrefixKV | None = None

    def base_kv(self) -> PrefixKV | None:
        return self.base.result if isinstance(self.base, Materialise) else self.base


@dataclass
class PrefixPlan:
    """How a batch is prefilled: each row's prefix (length and where its KV comes from) and the suffix width."""

    prefix_len: list[int]
    sources: list[PrefixKV | Materialise | None]  # per row: a held prefix, one computed here, or none (p = 0)
    materialise: list[Materialise]  # in computing order (a base comes before what extends it)
    suffix: int  # S: the suffix columns of the second forward
    cached: list[int]  # per row: prompt tokens it did not compute (reused KV)
    slots: int  # token slots the split path computes (+ FORWARD_COST per forward)
    plain_slots: int  # token slots of the plain padded prefill (+ FORWARD_COST)
    serves_later: bool = False  # a prefix it keeps is shared with prompts of later batches of the call

    @property
    def saved(self) -> int:
        return sum(self.cached)

    @property
    def pays_off(self) -> bool:
        """Whether to take the split path: clearly fewer slots in this batch, or prefixes later batches reuse
        (the plain path keeps no prefix, so every later sharer would compute it again)."""
        return self.slots <= SPLIT_GAIN * self.plain_slots or self.serves_later

    def kv_of(self, row: int) -> PrefixKV | None:
        src = self.sources[row]
        return src.result if isinstance(src, Materialise) else src


def _best_source(tokens: Sequence[int], planned: list[Materialise],
                 store: PrefixStore) -> tuple[PrefixKV | Materialise | None, int]:
    """The held or planned prefix sharing the most leading tokens with `tokens`, and how many."""
    best: PrefixKV | Materialise | None
    best, best_len = store.longest(tokens)
    for m in planned:
        n = common_prefix_len(m.tokens, tokens)
        if n > best_len:
            best, best_len = m, n
    return best, best_len


def call_shares(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Per prompt, the length of its longest common prefix with any other prompt (of one generate call)."""
    share = [0] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])  # prompts sharing a prefix end up adjacent
    for a, b in zip(order, order[1:], strict=False):
        k = common_prefix_len(prompts[a], prompts[b])
        share[a], share[b] = max(share[a], k), max(share[b], k)
    return share


def shared_with_later(prompts: Sequence[Sequence[int]], batch_of: Sequence[int], *,
                      min_shared: int = MIN_SHARED) -> list[bool]:
    """Per prompt: whether a prompt of a later batch starts with at least `min_shared` of its tokens (a group of
    prompts sharing a prefix is a run of the sorted order in which every neighbour pair shares it)."""
    later = [False] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    for a, b in zip(order, order[1:], strict=False):
        if batch_of[a] != batch_of[b] and common_prefix_len(prompts[a], prompts[b]) >= min_shared:
            later[a if batch_of[a] < batch_of[b] else b] = True
    return later


def _suffix_width(unique: list[int]) -> int:
    """S minimising padding + forwards: a row whose unique part is longer than S computes the excess as a prefix of
    its own (one more forward), a shorter one is padded to S in the suffix forward."""
    def cost(s: int) -> int:
        return sum(s - u if u <= s else FORWARD_COST for u in unique)

    return min(sorted(set(unique)), key=lambda s: (cost(s), s))


def plan_batch(prompts: Sequence[Sequence[int]], shares: Sequence[int], store: PrefixStore, *,
               later: Sequence[bool] | None = None, min_shared: int = MIN_SHARED) -> PrefixPlan | None:
    """The split prefill of a batch, or None when no row shares a prefix worth reusing.

    `shares`: per row, its longest common prefix with another prompt of the call (`call_shares`), so that a prefix
    shared with a row of a later batch is computed as such, kept in the store and found there. `later`: per row,
    whether a prompt of a later batch shares its prefix (`shared_with_later`)."""
    n = len(prompts)
    held = [store.longest(p)[1] for p in prompts]
    share = [min(max(s, h), len(p) - 1) for s, h, p in zip(shares, held, prompts, strict=True)]
    share = [s if s >= min_shared else 0 for s in share]
    if not any(share):
        return None
    serves_later = any(lt and s > h for lt, s, h in zip(later or [False] * n, share, held, strict=True))
    suffix = _suffix_width([len(p) - s for s, p in zip(share, prompts, strict=True)])
    prefix = [max(s, len(p) - suffix) for s, p in zip(share, prompts, strict=True)]

    sources: list[PrefixKV | Materialise | None] = [None] * n
    cached = [0] * n
    planned: list[Materialise] = []
    for i in sorted(range(n), key=lambda i: (-prefix[i], i)):  # longest first: shorter ones reuse their KV
        p = prefix[i]
        if p == 0:
            continue
        src, k = _best_source(prompts[i], planned, store)
        if src is not None and k >= p:
            sources[i], cached[i] = src, p
            continue
        base = src if src is not None and k >= min_shared else None
        m = Materialise(list(prompts[i][:p]), base, k if base is not None else 0, keep=share[i] > 0)
        planned.append(m)
        sources[i], cached[i] = m, m.base_len
    computed = sum(len(m.tokens) - m.base_len for m in planned)
    slots = computed + n * suffix + FORWARD_COST * (len(planned) + 1)
    plain = len({tuple(p) for p in prompts}) * max(len(p) for p in prompts) + FORWARD_COST
    return PrefixPlan(prefix, sources, planned, suffix, cached, slots, plain, serves_later)


def keep_prefixes(backend: Any) -> AbstractContextManager[Any]:
    """Keep a backend's computed prefixes across its generate calls within the block (backends without prefix
    caching: nothing)."""
    keep = getattr(backend, "keep_prefixes", None)
    return keep() if keep is not None else nullcontext()
