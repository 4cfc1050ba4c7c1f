"""One forward pass per question: the context and every option's continuation in one row, under a tree mask.

A question's row is `[context][option 1 tokens][option 2 tokens]...` (each option fed without its last token, as
lm-eval feeds context + continuation[:-1]). Position ids of every option restart at len(context), and the tree
mask lets context tokens attend causally and option tokens attend to the whole context plus the earlier tokens of
their own option only. So every scored position sees exactly what it sees in lm-eval's separate per-option
sequence, while the context is encoded once and there is one forward (no KV-cache copy, no second pass).

Packing, not padding: the rows of a batch are concatenated into ONE sequence of exactly their tokens (no padded
slots), so the Linear layers (most of the work) multiply only real tokens, and a batch is sized by its token count
(`max_tokens`), which keeps the matrix products in their efficient range whatever the question lengths. Attention
runs per question (`tree_attention`, registered with transformers' AttentionInterface and switched on for the
duration of the forward only): each question's queries, keys and values are a slice of the packed sequence,
scored with that question's own tree mask, so attention costs what it costs for the question alone.
The LM head runs only at the positions that predict a continuation token (a boolean `logits_to_keep`,
transformers >= 5): the last context token and every fed option token.

Whether a model routes its attention through the AttentionInterface, takes explicit position ids and a boolean
`logits_to_keep` is checked once per model by `tree_mask_works` (a tiny packed forward compared with plain causal
forwards); models that fail it are scored with the two-pass path of `meditune.evaluation.loglik`.
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_PROBED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
ATTENTION_NAME = "meditune_tree"
# Token budget of one packed forward on CPU: measured on the default model (2 threads), the float32 products
# run fastest at 1-2k rows (~25% faster per token than at 250 rows, ~15% faster than at 4k rows, which spill
# the caches). On GPU bigger batches only help; their memory grows linearly (no T x T mask is ever built).
CPU_MAX_TOKENS = 2048
GPU_MAX_TOKENS = 32768

# The segments (start, length, additive tree mask) of the packed forward in flight; read by tree_attention.
_SEGMENTS: contextvars.ContextVar[list[tuple[int, int, Any]] | None] = contextvars.ContextVar(
    "meditune_tree_segments", default=None)


class TreeAttentionUnsupported(RuntimeError):
    """The model asked tree_attention for a feature it does not implement (soft-capping, sinks, a window
    shorter than a question)."""


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


def token_budget_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Split rows, in the given order, into consecutive batches of at most max_rows rows and max_tokens tokens
    (a longer row gets a batch of its own). Returns index lists."""
    batches: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if batches and len(batches[-1]) < max_rows and used + n <= max_tokens:
            batches[-1].append(i)
            used += n
        else:
            batches.append([i])
            used = n
    return batches


def tree_mask(row: TreeRow, dtype: Any, device: Any) -> Any:
    """The additive [1, 1, n, n] mask of one row: causal, and an option token sees the context and its own option."""
    import torch

    seg = torch.tensor(row.segments, device=device)
    idx = torch.arange(len(row.ids), device=device)
    seg_q, seg_k = seg[:, None], seg[None, :]
    allowed = (idx[None, :] <= idx[:, None]) & ((seg_k == 0) | (seg_k == seg_q))
    mask = torch.zeros((1, 1, len(row.ids), len(row.ids)), dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def packed_inputs(rows: Sequence[TreeRow], dtype: Any, device: Any) -> tuple[dict[str, Any], list[tuple[int, int, Any]]]:
    """Model inputs for a batch of rows packed into one sequence, and its segments (start, length, tree mask)."""
    import torch

    ids, pos, keep, segments, start = [], [], [], [], 0
    for row in rows:
        n = len(row.ids)
        ids += row.ids
        pos += row.positions
        keep += [False] * (row.context_len - 1) + [True] * (n - row.context_len + 1)
        segments.append((start, n, tree_mask(row, dtype, device)))
        start += n
    inputs = {"input_ids": torch.tensor([ids], device=device), "position_ids": torch.tensor([pos], device=device),
              "logits_to_keep": torch.tensor([keep], device=device)}
    return inputs, segments


def tree_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                   dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """AttentionInterface function: attention of each packed question over its own slice, under its tree mask.

    query [1, heads, T, dim], key/value [1, kv_heads, T, dim] (rotary applied); returns [1, T, heads, dim].
    Outside a packed forward (no segments set) it is plain SDPA attention.
    """
    segments = _SEGMENTS.get()
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or dropout:
        raise TreeAttentionUnsupported("attention soft-capping, sinks or dropout")
    window = kwargs.get("sliding_window")
    if window is not None and max(n for _, n, _ in segments) > window:
        raise TreeAttentionUnsupported(f"a question longer than the sliding window of {window}")
    return segment_attention(query, key, value, segments, scaling), None


def active_segments() -> list[tuple[int, int, Any]] | None:
    """The segments of the packed forward in flight (None outside one)."""
    return _SEGMENTS.get()


def segment_attention(query: Any, key: Any, value: Any, segments: list[tuple[int, int, Any]],
                      scaling: float | None) -> Any:
    """Each question's attention over its own slice under its tree mask: [1, T, heads, dim] from query
    [1, heads, T, dim] and key/value [1, kv_heads, T, dim]."""
    import torch
    import torch.nn.functional as F

    gqa = query.shape[1] != key.shape[1]
    out = [F.scaled_dot_product_attention(query[:, :, s:s + n], key[:, :, s:s + n], value[:, :, s:s + n],
                                          attn_mask=mask, scale=scaling, enable_gqa=gqa)
           for s, n, mask in segments]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous()


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, tree_attention)


@contextmanager
def tree_attention_on(model: Any, segments: list[tuple[int, int, Any]]) -> Iterator[None]:
    """Route the model's attention through tree_attention for these segments, restoring it afterwards (a model
    with `own_tree_attention`, meditune.plain_llama, reads the segments itself)."""
    token = _SEGMENTS.set(segments)
    if getattr(model, "own_tree_attention", False):
        try:
            yield
        finally:
            _SEGMENTS.reset(token)
        return
    _register()
    config = model.config
    before = config._attn_implementation
    try:
        config._attn_implementation = ATTENTION_NAME
        yield
    finally:
        config._attn_implementation = before
        _SEGMENTS.reset(token)


def tree_targets(rows: Sequence[TreeRow]) -> tuple[list[int], list[int], list[int]]:
    """For every scored token: its row in the kept logits, its target id and its option's index in the batch.

    Kept logits come in sequence order: per row, the last context token, then the option tokens.
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


def packed_logits(model: Any, rows: Sequence[TreeRow]) -> Any:
    """Logits [kept positions, vocab] of one packed forward of these rows under their tree masks."""
    inputs, segments = packed_inputs(rows, _float_dtype(model), model.device)
    with tree_attention_on(model, segments):
        logits = model(**inputs, use_cache=False).logits
    return logits.reshape(-1, logits.shape[-1])


def score_tree_batch(model: Any, rows: Sequence[TreeRow]) -> list[tuple[list[float], list[bool]]]:
    """(per-option log-likelihoods, per-option is-greedy) of each row, from one packed forward pass."""
    import torch
    import torch.nn.functional as F

    dev = model.device
    logits = packed_logits(model, rows)
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


def default_max_tokens(model: Any) -> int:
    """Token budget of one packed forward for this model's device."""
    return GPU_MAX_TOKENS if getattr(model.device, "type", "cpu") != "cpu" else CPU_MAX_TOKENS


def sliding_window(model: Any) -> int | None:
    """The model's attention window when it has one (None: full attention)."""
    config = model.config
    for cfg in (config, getattr(config, "text_config", None)):
        window = getattr(cfg, "sliding_window", None) if cfg is not None else None
        if window and getattr(cfg, "use_sliding_window", True) is not False:
            return int(window)
    return None


def _float_dtype(model: Any) -> Any:
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def tree_mask_works(model: Any) -> bool:
    """True when the model scores packed tree rows as it scores the plain per-option sequences.

    Catches models whose attention does not go through transformers' AttentionInterface (so a packed sequence
    would attend across questions), that ignore explicit position ids, or that do not take a boolean
    `logits_to_keep`. The answer is remembered per model object.
    """
    try:
        return _PROBED[model]
    except (KeyError, TypeError):
        pass
    ok = _probe(model)
    try:
        _PROBED[model] = ok
    except TypeError:
        pass
    if not ok:
        log.info("model does not take packed tree attention: scoring with the two-pass path")
    return ok


def _probe(model: Any) -> bool:
    import torch

    vocab = int(getattr(model.config, "vocab_size", 0) or 0) or 1000
    tok = [(97 + 131 * i) % vocab for i in range(12)]
    rows = [tree_row(tok[:5], [tok[5:8], tok[8:10]]), tree_row(tok[2:5], [tok[9:11], tok[6:9]])]
    dev = model.device
    try:
        with torch.inference_mode():
            got = packed_logits(model, rows)
            ref = []
            for row in rows:
                for cont in row.continuations:
                    seq = row.ids[:row.context_len] + cont[:-1]
                    plain = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0]
                    ref.append(plain[row.context_len - 1:])
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError) as e:
        log.debug("tree attention probe failed: %s", e)
        return False
    flat, _, _ = tree_targets(rows)
    if got.shape[0] != max(flat) + 1:
        return False
    want = torch.cat(ref).float()
    tol = (1e-4 if _float_dtype(model) == torch.float32 else 3e-2) * (1.0 + float(want.abs().max()))
    return float((got[torch.tensor(flat, device=dev)].float() - want).abs().max()) <= tol
