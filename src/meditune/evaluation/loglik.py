"""Log-likelihood of answer continuations with a shared prefix: the context is encoded once per question.

Tokenisation follows lm-evaluation-harness `_encode_pair` exactly (trailing context whitespace moves to the
continuation; context+continuation are encoded together and split at len(encode(context))), so the tokens
scored, and therefore the numbers, are the same as lm-eval's; only the work differs:

  lm-eval:  for each option: forward(context + continuation[:-1]) and a log-softmax over every position
  meditune, "tree" (default): one row per question, [context][option 1][option 2]... under a tree attention
            mask, the rows of a batch packed into one sequence without padding, LM head only where a continuation
            token is predicted (meditune.evaluation.loglik_tree)
  meditune, "two-pass" (fallback for models whose attention does not go through transformers'
            AttentionInterface, or with a window shorter than a question): forward(context) once per question
            (batched, right-padded, LM head only at the last position), then forward(continuation[:-1]) for all
            options at once against the context's cached keys/values.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meditune.cost import count_tokens
from meditune.errors import ConfigError
from meditune.models import kv_cache_argument

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the model config names no context length
Method = Literal["auto", "tree", "two-pass"]


@dataclass
class LoglikRequest:
    """One question: a context and the continuations (one per option) to score after it."""

    context: str
    continuations: list[str]


@dataclass
class OptionScores:
    """Per-option results of one request."""

    loglik: list[float]
    is_greedy: list[bool]
    n_tokens: list[int]  # continuation tokens per option
    context_tokens: int = 0  # context tokens actually fed (after truncation)
    truncated_tokens: int = 0  # context tokens dropped from the left to fit the window


@dataclass
class BatchHooks:
    """Lets a caller run only some of the planned batches and keep each batch's results as soon as it finishes
    (resume a killed run batch by batch; split the batches across ranks). Batches are planned exactly as without
    hooks, so a batch that runs holds the same requests, and gives the same numbers, whichever batches run."""

    run: Callable[[list[int]], bool] | None = None  # request indices of a planned batch -> run it? (in plan order)
    done: Callable[[list[int], list[Any]], None] | None = None  # (request indices, their results) after a batch

    def wants(self, indices: list[int]) -> bool:
        return self.run is None or self.run(indices)

    def finished(self, indices: list[int], results: list[Any]) -> None:
        if self.done is not None:
            self.done(indices, results)


NO_HOOKS = BatchHooks()


@dataclass
class _Encoded:
    index: int
    ctx: list[int]
    conts: list[list[int]]
    truncated: int = 0
    scores: OptionScores | None = field(default=None, repr=False)


def model_max_length(model: Any, tokenizer: Any) -> int:
    """The context window, found as lm-eval's HFLM finds it (config attributes, then the tokenizer)."""
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000_000:
        return tml
    return DEFAULT_MAX_LENGTH


class TokenEncoder:
    """lm-eval's tok_encode/_encode_pair for causal models."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Encode like lm-eval: no second BOS when the text already starts with it."""
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and self._prefix_text and text.startswith(self._prefix_text):
            kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) exactly as lm-eval's _encode_pair (+ its empty-context rule)."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if self.prefix_token_id is None:
                raise ConfigError("empty context and the tokenizer has neither BOS nor EOS to condition on")
            return ([self.prefix_token_id], cont) if cont[:1] != [self.prefix_token_id] else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def encode_request(self, req: LoglikRequest) -> tuple[list[int], list[list[int]]]:
        """Shared context tokens and per-option continuation tokens of one request."""
        ctx: list[int] | None = None
        conts = []
        for cont in req.continuations:
            c, k = self.encode_pair(req.context, cont)
            if ctx is None:
                ctx = c
            elif c != ctx:  # cannot happen for one context; guard the shared-prefix assumption anyway
                raise RuntimeError("context tokens differ between options")
            if not k:
                raise ConfigError(f"continuation {cont!r} encodes to no tokens")
            conts.append(k)
        return ctx or [], conts


def _supports_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class LoglikScorer:
    """Scores LoglikRequests with a causal LM, sharing each context's forward pass across its options.

    method: "tree" = one packed forward per batch of questions under tree masks, "two-pass" = context pass +
    KV-cache expansion + continuation pass, "auto" = tree when the model passes `tree_mask_works`, else two-pass.
    A tree batch holds at most `batch_size` questions and `max_tokens` tokens (default: by device).
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 16, max_length: int | None = None,
                 method: Method = "auto", max_tokens: int | None = None):
        if method not in ("auto", "tree", "two-pass"):
            raise ConfigError(f"unknown scoring method {method!r}: use auto, tree or two-pass")
        self.model = model
        self.encoder = TokenEncoder(tokenizer)
        self.batch_size = max(1, batch_size)
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.method = method
        self.max_tokens = max_tokens
        self._keep = _supports_logits_to_keep(model)
        self._cache_kw = kv_cache_argument(model)  # `cache` or `past_key_values`: the model's, found once

    def resolved_method(self) -> str:
        """The path score() takes for this model: "tree" or "two-pass"."""
        from meditune.evaluation.loglik_tree import tree_mask_works

        if self.method == "auto":
            return "tree" if self._keep and tree_mask_works(self.model) else "two-pass"
        return self.method

    def encode(self, requests: Sequence[LoglikRequest]) -> list[_Encoded]:
        """Tokenise and left-truncate every request so that context + longest continuation fits the window."""
        out = []
        for i, req in enumerate(requests):
            ctx, conts = self.encoder.encode_request(req)
            longest = max(len(c) for c in conts)
            if longest > self.max_length:
                raise ConfigError(f"request {i}: a continuation of {longest} tokens exceeds the window "
                                  f"of {self.max_length}")
            # lm-eval keeps the last max_length+1 tokens of context+continuation and feeds all but the last
            budget = self.max_length + 1 - longest
            dropped = max(0, len(ctx) - budget)
            out.append(_Encoded(i, ctx[dropped:], conts, dropped))
        return out

    def score(self, requests: Sequence[LoglikRequest], progress: Callable[[int], None] | None = None,
              hooks: BatchHooks = NO_HOOKS) -> list[OptionScores]:
        """OptionScores for each request, in input order (None for requests of batches `hooks` skipped)."""
        import torch

        enc = self.encode(requests)
        if not enc:
            return []
        count_tokens("scored", sum(len(e.ctx) + sum(len(c) for c in e.conts) for e in enc))
        with torch.inference_mode():
            if self.resolved_method() == "tree":
                self._score_tree(enc, progress, hooks)
            else:
                self._score_two_pass(enc, progress, hooks)
        return [e.scores for e in enc]  # type: ignore[misc]

    def _score_tree(self, enc: list[_Encoded], progress: Callable[[int], None] | None, hooks: BatchHooks) -> None:
        from meditune.evaluation import loglik_tree as lt

        rows = [lt.tree_row(e.ctx or [self.encoder.prefix_token_id], e.conts) for e in enc]
        window = lt.sliding_window(self.model)
        fits, left = [], []  # left: longer than the model's attention window, scored with two-pass
        for i, row in enumerate(rows):
            if window is not None and len(row.ids) > window:
                left.append(enc[i])
            else:
                fits.append(i)
        order = sorted(fits, key=lambda i: (-len(rows[i].ids), i))  # longest first: the peak comes early
        max_tokens = self.max_tokens or lt.default_max_tokens(self.model)
        batches = [[order[k] for k in idx] for idx in
                   lt.token_budget_batches([len(rows[i].ids) for i in order], self.batch_size, max_tokens)]
        for n, batch in enumerate(batches):
            if not hooks.wants([enc[i].index for i in batch]):
                continue
            try:
                results = lt.score_tree_batch(self.model, [rows[i] for i in batch])
            except lt.TreeAttentionUnsupported as e:
                log.info("tree scoring unsupported (%s): two-pass for the remaining questions", e)
                left += [enc[i] for b in batches[n:] for i in b]
                break
            for i, (lls, greedy) in zip(batch, results, strict=True):
                e = enc[i]
                e.scores = OptionScores(lls, greedy, [len(c) for c in e.conts], len(e.ctx), e.truncated)
            hooks.finished([enc[i].index for i in batch], [enc[i].scores for i in batch])
            if progress:
                progress(len(batch))
        if left:  # longer than the model's attention window, or the model's attention needs what tree lacks
            self._score_two_pass(left, progress, hooks)

    def _score_two_pass(self, enc: list[_Encoded], progress: Callable[[int], None] | None,
                        hooks: BatchHooks = NO_HOOKS) -> None:
        order = sorted(enc, key=lambda e: (-len(e.ctx), e.index))  # longest first: padding stays small
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            if not hooks.wants([e.index for e in batch]):
                continue
            self._score_two_pass_batch(batch)
            hooks.finished([e.index for e in batch], [e.scores for e in batch])
            if progress:
                progress(len(batch))

    def _forward(self, **kwargs: Any) -> Any:
        if not self._keep:
            kwargs.pop("logits_to_keep", None)
        return self.model(**kwargs)

    def _score_two_pass_batch(self, batch: list[_Encoded]) -> None:
        import torch
        import torch.nn.functional as F

        dev = self.model.device
        lens = [max(1, len(e.ctx)) for e in batch]
        width = max(lens)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):
            ctx = e.ctx or [self.encoder.prefix_token_id]
            ids[r, :len(ctx)] = torch.tensor(ctx)
            mask[r, :len(ctx)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        last = torch.tensor(lens, device=dev) - 1
        # Pass 1: contexts, right-padded; logits only at each row's last real token.
        out = self._forward(input_ids=ids, attention_mask=mask, use_cache=True,
                            logits_to_keep=last.unsqueeze(1))
        logits = out.logits
        first = logits[:, 0, :] if self._keep else logits[torch.arange(len(batch), device=dev), last]
        first_lp = F.log_softmax(first.float(), dim=-1)  # [B, V]: predicts each option's first token

        # Pass 2: every option's continuation[:-1] against its question's cached context.
        rows = [(r, j) for r, e in enumerate(batch) for j, c in enumerate(e.conts) if len(c) > 1]
        rest_lp = None
        if rows:
            t = max(len(batch[r].conts[j]) - 1 for r, j in rows)
            cids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
            cmask = torch.zeros((len(rows), t), dtype=torch.long)
            for k, (r, j) in enumerate(rows):
                cont = batch[r].conts[j][:-1]
                cids[k, :len(cont)] = torch.tensor(cont)
                cmask[k, :len(cont)] = 1
            cids, cmask = cids.to(dev), cmask.to(dev)
            src = torch.tensor([r for r, _ in rows], device=dev)
            cache = out.past_key_values
            cache.batch_select_indices(src)  # expand: one cache row per option (a copy, by index)
            full_mask = torch.cat([mask[src], cmask], dim=1)
            pos = last[src].unsqueeze(1) + 1 + torch.arange(t, device=dev).unsqueeze(0)
            out2 = self.model(input_ids=cids, attention_mask=full_mask, position_ids=pos,
                              use_cache=True, **{self._cache_kw: cache})
            rest_lp = F.log_softmax(out2.logits.float(), dim=-1)  # [rows, t, V]
        row_of = {rj: k for k, rj in enumerate(rows)}

        for r, e in enumerate(batch):
            lls, greedy, ntok = [], [], []
            for j, cont in enumerate(e.conts):
                lp0 = first_lp[r]
                total = float(lp0[cont[0]])
                is_greedy = int(lp0.argmax()) == cont[0]
                if len(cont) > 1:
                    lp = rest_lp[row_of[(r, j)], : len(cont) - 1]  # type: ignore[index]
                    target = torch.tensor(cont[1:], device=dev)
                    total += float(lp.gather(1, target.unsqueeze(1)).sum())
                    is_greedy = is_greedy and bool((lp.argmax(dim=-1) == target).all())
                lls.append(total)
                greedy.append(is_greedy)
                ntok.append(len(cont))
            e.scores = OptionScores(lls, greedy, ntok, len(e.ctx), e.truncated)


def naive_score(model: Any, tokenizer: Any, requests: Sequence[LoglikRequest],
                max_length: int | None = None) -> list[OptionScores]:
    """Reference scorer: one full forward pass of context + continuation per option, no batching, no cache."""
    import torch
    import torch.nn.functional as F

    encoder = TokenEncoder(tokenizer)
    max_length = max_length or model_max_length(model, tokenizer)
    results = []
    with torch.inference_mode():
        for req in requests:
            ctx, conts = encoder.encode_request(req)
            lls, greedy, ntok = [], [], []
            for cont in conts:
                seq = (ctx + cont)[-(max_length + 1):][:-1]
                ids = torch.tensor([seq], device=model.device)
                lp = F.log_softmax(model(input_ids=ids).logits[0, -len(cont):].float(), dim=-1)
                target = torch.tensor(cont, device=model.device)
                lls.append(float(lp.gather(1, target.unsqueeze(1)).sum()))
                greedy.append(bool((lp.argmax(-1) == target).all()))
                ntok.append(len(cont))
            results.append(OptionScores(lls, greedy, ntok, len(ctx)))
    return results
