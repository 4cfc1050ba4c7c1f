"""One forward pass per question: the context and every option's continuation in one row, under a tree mask.

A row is `[context][option 1 tokens][option 2 tokens]...` (each option fed without its last token, as lm-eval
feeds context + continuation[:-1]). Position ids of every option restart at len(context), and a 4D additive
attention mask lets context tokens attend causally and option tokens attend to the whole context plus the
earlier tokens of their own option only. So every scored position sees exactly what it sees in lm-eval's
separate per-option sequence, while the context is encoded once and there is one forward (no KV-cache copy,
no second pass). The LM head runs only at the positions that predict a continuation token (a boolean
`logits_to_keep`, transformers >= 5): the last context token and every fed option token.

Whether a model honours a custom 4D mask, explicit position ids and a boolean `logits_to_keep` is checked once
per model by `tree_mask_works` (a tiny forward compared with plain causal forwards); models that fail it are
scored with the two-pass path of `meditune.evaluation.loglik`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_PROBED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
# Most padding a batch may carry (fraction of its token slots). Padded slots cost as much as real tokens, and on
# CPU a batch of one question (a ~250-row matmul) is already about as efficient as a batch of eight, so a sparse
# length distribution is better served by smaller batches than by padding.
MAX_PADDING = 0.1


@dataclass
class TreeRow:
    """One question laid out as a tree row: token ids, segment of each token (0 = context, j+1 = option j)."""

    ids: list[int]
    segments: list[int]
    positions: list[int]
    context_len: int
    continuations: list[list[int]]


def tree_row(context: Sequence[int], continuations: Sequence[Sequence[int]]) -> TreeRow:
    """Lay out a question: context, then every continuation minus its last token, positions restarting."""
    n = len(context)
    ids, segments, positions = list(context), [0] * n, list(range(n))
    for j, cont in enumerate(continuations):
        fed = list(cont[:-1])
        ids += fed
        segments += [j + 1] * len(fed)
        positions += range(n, n + len(fed))
    return TreeRow(ids, segments, positions, n, [list(c) for c in continuations])


def padding_bounded_batches(lengths: Sequence[int], max_rows: int, max_padding: float = MAX_PADDING
                            ) -> list[list[int]]:
    """Split rows of non-increasing lengths into consecutive batches of at most max_rows rows whose padding
    (to the first, longest row) stays within max_padding of the batch's token slots. Returns index lists."""
    batches: list[list[int]] = []
    for i, n in enumerate(lengths):
        cur = batches[-1] if batches else None
        if cur is not None and len(cur) < max_rows:
            width = lengths[cur[0]]
            padding = sum(width - lengths[j] for j in cur) + width - n
            if padding <= max_padding * width * (len(cur) + 1):
                cur.append(i)
                continue
        batches.append([i])
    return batches


def tree_inputs(rows: Sequence[TreeRow], pad_id: int, dtype: Any, device: Any) -> dict[str, Any]:
    """Model inputs for a batch of rows (right-padded): ids, 4D additive mask, position ids, positions to keep."""
    import torch

    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)  # -1 = padding
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, row in enumerate(rows):
        n = len(row.ids)
        ids[r, :n] = torch.tensor(row.ids)
        seg[r, :n] = torch.tensor(row.segments)
        pos[r, :n] = torch.tensor(row.positions)
        keep[r, row.context_len - 1:n] = True  # the last context token and every option token predict a token
    idx = torch.arange(width)
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    allowed = (idx[None, :] <= idx[:, None]) & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
    # padding queries see the context only: no fully masked row (no NaN), and their outputs are never read
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device),
            "logits_to_keep": keep.to(device)}


def tree_targets(rows: Sequence[TreeRow]) -> tuple[list[int], list[int], list[int]]:
    """For every scored token: its row in the kept logits, its target id and its option's index in the batch.

    Kept logits come flattened in row-major order: per row, the last context token, then the option tokens.
    """
    flat, target, option = [], [], []
    base, g = 0, 0
    for row in rows:
        offset = base + 1  # first option token of this row
        for cont in row.continuations:
            flat += [base] + list(range(offset, offset + len(cont) - 1))
            target += cont
            option += [g] * len(cont)
            offset += len(cont) - 1
            g += 1
        base = offset
    return flat, target, option


def score_tree_batch(model: Any, rows: Sequence[TreeRow], pad_id: int
                     ) -> list[tuple[list[float], list[bool]]]:
    """(per-option log-likelihoods, per-option is-greedy) of each row, from one forward pass."""
    import torch
    import torch.nn.functional as F

    dev = model.device
    inputs = tree_inputs(rows, pad_id, _float_dtype(model), dev)
    logits = model(**inputs, use_cache=False).logits  # [kept positions, vocab]
    flat, target, option = tree_targets(rows)
    flat_t = torch.tensor(flat, device=dev)
    target_t = torch.tensor(target, device=dev)
    option_t = torch.tensor(option, device=dev)
    n_options = sum(len(r.continuations) for r in rows)
    lp = F.log_softmax(logits.float(), dim=-1)
    token_lp = lp[flat_t, target_t]
    loglik = torch.zeros(n_options, dtype=torch.float64, device=dev).index_add_(0, option_t, token_lp.double())
    misses = (lp.argmax(dim=-1)[flat_t] != target_t).long()
    greedy = torch.zeros(n_options, dtype=torch.long, device=dev).index_add_(0, option_t, misses) == 0
    loglik_l, greedy_l = loglik.tolist(), greedy.tolist()
    out, g = [], 0
    for row in rows:
        k = len(row.continuations)
        out.append((loglik_l[g:g + k], greedy_l[g:g + k]))
        g += k
    return out


def _float_dtype(model: Any) -> Any:
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def tree_mask_works(model: Any, pad_id: int) -> bool:
    """True when the model scores a padded batch of tree rows as it scores the plain per-option sequences.

    Catches models that ignore a custom 4D mask or explicit position ids, or that do not take a boolean
    `logits_to_keep`. The answer is remembered per model object.
    """
    try:
        return _PROBED[model]
    except (KeyError, TypeError):
        pass
    ok = _probe(model, pad_id)
    try:
        _PROBED[model] = ok
    except TypeError:
        pass
    if not ok:
        log.info("model does not take a custom tree attention mask: scoring with the two-pass path")
    return ok


def _probe(model: Any, pad_id: int) -> bool:
    import torch

    vocab = int(getattr(model.config, "vocab_size", 0) or 0) or 1000
    tok = [(97 + 131 * i) % vocab for i in range(12)]
    rows = [tree_row(tok[:5], [tok[5:8], tok[8:10]]), tree_row(tok[2:5], [tok[9:11], tok[6:9]])]
    dev, dtype = model.device, _float_dtype(model)
    try:
        with torch.inference_mode():
            got = model(**tree_inputs(rows, pad_id, dtype, dev), use_cache=False).logits
            ref = []
            for row in rows:
                for cont in row.continuations:
                    seq = row.ids[:row.context_len] + cont[:-1]
                    plain = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0]
                    ref.append(plain[row.context_len - 1:])
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        log.debug("tree mask probe failed: %s", e)
        return False
    flat, _, _ = tree_targets(rows)
    if got.ndim != 2 or got.shape[0] != max(flat) + 1:
        return False
    want = torch.cat(ref).float()
    tol = (1e-4 if dtype == torch.float32 else 3e-2) * (1.0 + float(want.abs().max()))
    return float((got[torch.tensor(flat, device=dev)].float() - want).abs().max()) <= tol
