"""Batched generation with a transformers model: left padding, length-sorted batches, per-sample seeds.

What is guaranteed: a sample's output is a function of (model, prompt, params, sample index) on the same
hardware, dtype and batch layout. The random stream of a sample depends only on (seed, index), never on the
other requests of the batch; a different batch composition changes the padding and so can change logits in
the last floating-point bits, which very rarely flips a token (greedy ties or a draw at a CDF boundary).
`meditune generate` fixes the batch layout per work unit, so resumed jobs reproduce uninterrupted ones exactly.

Speed (see docs/generation.md, Throughput): the KV cache is preallocated for the batch's
final length (kv_cache.py); on float32 CPU models the Linear weights are MKL-packed for the batch's row count
where that is bit-exact (packed_linear.py); finished rows stay in the batch, fed padding as `model.generate` does,
until at most a quarter of the rows still run, so the row count (and its packing) holds while rows finish.
Prompts that share a token prefix (few-shot exemplars, the n samples of a request) compute its KV cache once per
call (prefix_cache.py); `prefill_tokens` / `prefill_tokens_saved` count the prompt tokens prefilled and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from meditune.chat import render_chat
from meditune.cost import count_tokens
from meditune.generation.base import BackendConfig, Generation, GenerationRequest, SamplingParams
from meditune.generation.kv_cache import full_attention_only, preallocated_cache
from meditune.generation.packed_linear import packed_linears_of
from meditune.generation.prefix_cache import (
    DEFAULT_STORE_BYTES,
    PrefixKV,
    PrefixPlan,
    PrefixStore,
    call_shares,
    plan_batch,
    shared_with_later,
)
from meditune.generation.sampling import check_request, sample_next, sample_seed, truncate_at_stop

log = logging.getLogger(__name__)

# Pack the weights for a batch that dropped rows only when at least this many steps may remain (a packing costs
# about two decoding steps).
REPACK_STEPS = 16


@dataclass
class _Row:
    """One sample being generated: request position, sample index, prompt ids and its progress."""

    req: int
    index: int
    prompt: list[int]
    params: SamplingParams
    max_new: int
    out: list[int] = field(default_factory=list)
    finish: str | None = None
    cached: int = 0  # prompt tokens whose KV was reused, not computed for this row
    share: int = 0  # longest common prefix with another prompt of the call
    later: bool = False  # a prompt of a later batch of the call shares its prefix


class TransformersBackend:
    """The `transformers` backend: a local model, batched on CPU or GPU."""

    name = "transformers"

    def __init__(self, cfg: BackendConfig | None = None, *, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg or BackendConfig()
        from meditune.models import kv_cache_argument, load_shared_model, set_pad_token

        if model is None:  # backends on the same model (generators, judges) share one copy of the weights
            model, tokenizer = load_shared_model(self.cfg.model)
        self.model, self.tokenizer = model, tokenizer
        set_pad_token(self.tokenizer)  # a tokenizer passed in (tests, strategies) may come without one
        self.batch_size = max(1, self.cfg.batch_size)
        self.eos_ids = self._eos_ids()
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.tokens_generated = 0  # running total, for progress bars
        self.prefill_tokens = 0  # running totals: prompt tokens of the rows prefilled, and those served from
        self.prefill_tokens_saved = 0  # KV computed once for several rows (shared prefixes, n samples)
        self._keep_last = True
        self._cache_kw = kv_cache_argument(model)
        # float32 CPU models with MKL, when asked (pack_weights); one per model, shared by its backends
        self.packed_linears = packed_linears_of(model) if self.cfg.pack_weights else None
        # prefix caching needs every layer to keep its whole history (no sliding window, no recurrent state)
        self.prefix_cache = self.cfg.prefix_cache and full_attention_only(model.config)
        self.prefix_store_bytes = DEFAULT_STORE_BYTES
        self._store: PrefixStore | None = None

    @property
    def label(self) -> str:
        return self.cfg.label

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for v in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        return ids

    def prompt_text(self, req: GenerationRequest) -> str:
        """The exact text fed to the model: the raw prompt, or the chat rendered with our system-prompt policy."""
        if req.prompt is not None:
            return req.prompt
        return render_chat(self.tokenizer, req.messages, system_prompt=self.cfg.system_prompt) + req.prefill

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        """Token ids of the prompt: the request's own, else its text encoded (raw prompts get the tokenizer's special
        tokens unless the text already starts with BOS, as lm-eval encodes; chat templates bring their own)."""
        if req.prompt_ids is not None:
            return list(req.prompt_ids)
        text = self.prompt_text(req)
        bos = self.tokenizer.bos_token
        special = req.prompt is not None and not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        """All n samples of every request, in request order."""
        steps = self.generate_steps(requests)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    @contextmanager
    def keep_prefixes(self) -> Iterator[None]:
        """Keep the prefixes computed by the generate calls of this block for the next ones (a strategy's answers
        and their retries ask the same prompts again); outside such a block the store lives for one call."""
        outer = self._store
        if outer is None:
            self._store = PrefixStore(self.prefix_store_bytes)
        try:
            yield
        finally:
            if outer is None:
                self._store = None

    def step_context(self) -> Any:
        """The context a thread that interleaves several `generate_steps` must hold around all of them: each
        batch enters inference mode for its own steps, and those thread-local modes must not unwind each other."""
        import torch

        return torch.inference_mode()

    def generate_steps(self, requests: Sequence[GenerationRequest],
                       cancelled: Callable[[int], bool] | None = None) -> Generator[list[tuple[int, list[Generation]]],
                                                                                  None, list[list[Generation]]]:
        """`generate`, one decoding step at a time (for a server that shares the model between requests).

        Yields after every step the requests completed by it, as (request position, its generations), and
        returns all generations. Rows of a request for which `cancelled(position)` turns true stop at the next
        step (finish_reason "cancelled"). The tokens are those of `generate`: stepping changes nothing."""
        for req in requests:
            check_request(req)
        rows: list[_Row] = []
        results: list[list[Generation | None]] = [[None] * r.params.n for r in requests]
        for ri, req in enumerate(requests):
            ids = self.prompt_ids(req)
            room = self.context - len(ids)
            for k in range(req.params.n):
                if room < 1:
                    log.warning("request %r: prompt of %d tokens does not fit the %d-token context",
                                req.id, len(ids), self.context)
                    results[ri][k] = Generation(req.id, k, "", len(ids), 0, "error")
                    continue
                rows.append(_Row(ri, k, ids, req.params, min(req.params.max_new_tokens, room)))
        left = [sum(g is None for g in gens) for gens in results]  # rows still to finish, per request
        done_now = [(i, list(gens)) for i, gens in enumerate(results) if left[i] == 0]
        if done_now:
            yield done_now  # type: ignore[misc]
        # Longest prompts first: padding stays small and an out-of-memory shows up in the first batch.
        rows.sort(key=lambda r: (-len(r.prompt), r.req, r.index))
        store = self._store if self._store is not None else PrefixStore(self.prefix_store_bytes)
        if self.prefix_cache:
            prompts = [r.prompt for r in rows]
            later = shared_with_later(prompts, [i // self.batch_size for i in range(len(rows))])
            for r, share, lt in zip(rows, call_shares(prompts), later, strict=True):
                r.share, r.later = share, lt
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            for finished in self._batch_steps(batch, cancelled, store):
                done_now = []
                for r in finished:
                    results[r.req][r.index] = self._finish(requests[r.req], r)
                    left[r.req] -= 1
                    if left[r.req] == 0:
                        done_now.append((r.req, list(results[r.req])))
                yield done_now  # type: ignore[misc]
        return [list(gens) for gens in results]  # type: ignore[arg-type]

    def _finish(self, req: GenerationRequest, row: _Row) -> Generation:
        out = row.out
        if out and out[-1] in self.eos_ids:
            out = out[:-1]
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        text, hit = truncate_at_stop(text, row.params.stop)
        reason = "cancelled" if row.finish == "cancelled" else "stop" if hit or row.finish == "stop" else "length"
        return Generation(req.id, row.index, req.prefill + text, len(row.prompt), len(row.out), reason,
                          cached_tokens=row.cached)

    def _stop_hit(self, row: _Row) -> bool:
        # Decode only the tail: enough tokens to contain the longest stop string.
        tail = max(len(s) for s in row.params.stop) + 8
        return truncate_at_stop(self.tokenizer.decode(row.out[-tail:], skip_special_tokens=True),
                                row.params.stop)[1]

    def _forward(self, cache: Any = None, **inputs: Any) -> Any:
        """Last-position logits; logits_to_keep=1 skips the vocabulary projection of the other positions."""
        if cache is not None:
            inputs[self._cache_kw] = cache
        if self._keep_last:
            try:
                return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]
            except TypeError as e:  # models (remote code, older) that do not take logits_to_keep
                if "logits_to_keep" not in str(e):
                    raise
                self._keep_last = False
        return self.model(**inputs, use_cache=True).logits[:, -1, :]

    def _prefill(self, batch: list[_Row], store: PrefixStore | None, capacity: int) -> tuple[Any, Any, Any, Any]:
        """(last-position logits, attention mask, position ids, KV cache) of the batch's prompts.

        A shared prefix is computed once (prefix_cache.py) when that saves enough; otherwise the prompts go through
        one padded forward, each distinct prompt once (the n samples of a request share it, their cache rows
        are then copied per sample)."""
        import torch

        plan = plan_batch([r.prompt for r in batch], [r.share for r in batch], store, later=[r.later for r in batch]) \
            if self.prefix_cache and store is not None else None
        if plan is not None and plan.pays_off:
            return self._split_prefill(batch, plan, store, capacity)
        dev = self.model.device
        width = max(len(r.prompt) for r in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in batch], device=dev)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in batch], device=dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = preallocated_cache(self.model.config, width + capacity)
        source = self._prefill_sources(batch)
        self._count_prefill(batch, [0 if source[j] == j else len(r.prompt) for j, r in enumerate(batch)])
        heads = sorted(set(source))
        if len(heads) == len(batch):
            logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache)
            return logits, mask, pos, cache
        uniq = torch.tensor(heads, device=ids.device)
        logits = self._forward(input_ids=ids[uniq], attention_mask=mask[uniq], position_ids=pos[uniq],
                               cache=cache)
        rank = {j: k for k, j in enumerate(heads)}
        expand = torch.tensor([rank[j] for j in source], device=ids.device)
        cache.batch_select_indices(expand)
        return logits[expand], mask, pos, cache

    @staticmethod
    def _prefill_sources(batch: list[_Row]) -> list[int]:
        """Per row, the row whose prefill it reuses: the first sample of its request (samples are adjacent)."""
        first: dict[int, int] = {}
        return [first.setdefault(r.req, j) for j, r in enumerate(batch)]

    def _count_prefill(self, batch: list[_Row], cached: list[int]) -> None:
        for r, c in zip(batch, cached, strict=True):
            r.cached = c
        self.prefill_tokens += sum(len(r.prompt) for r in batch)
        self.prefill_tokens_saved += sum(cached)

    def _materialise(self, tokens: list[int], base: PrefixKV | None, base_len: int) -> PrefixKV:
        """The KV of a token prefix, computed as one unpadded row on top of the first base_len tokens of base."""
        import torch

        dev = self.model.device
        cache = preallocated_cache(self.model.config, len(tokens))
        if base is not None and base_len:
            for layer, (k, v) in enumerate(base.layers):
                cache.update(k[:, :, :base_len], v[:, :, :base_len], layer)
        self._forward(input_ids=torch.tensor([tokens[base_len:]], device=dev),
                      attention_mask=torch.ones((1, len(tokens)), dtype=torch.long, device=dev),
                      position_ids=torch.arange(base_len, len(tokens), device=dev)[None],
                      cache=cache)
        return PrefixKV(tokens, [(layer.keys, layer.values) for layer in cache.layers])

    def _split_prefill(self, batch: list[_Row], plan: PrefixPlan, store: PrefixStore,
                       capacity: int) -> tuple[Any, Any, Any, Any]:
        """Prefill from shared prefixes: each distinct prefix computed once, then one forward of the suffixes."""
        import torch

        dev = self.model.device
        for m in plan.materialise:
            m.result = self._materialise(m.tokens, m.base_kv(), m.base_len)
            if m.keep:
                store.add(m.result)
        width, suffix, pad = max(plan.prefix_len), plan.suffix, self.tokenizer.pad_token_id
        kvs = [plan.kv_of(j) for j in range(len(batch))]
        cache = preallocated_cache(self.model.config, width + suffix + capacity)
        if width:  # every row's prefix KV, right-aligned in `width` columns (zeros before it, masked)
            layers = next(kv for kv in kvs if kv is not None).layers
            for layer, (k0, v0) in enumerate(layers):
                keys = k0.new_zeros((len(batch), k0.shape[1], width, k0.shape[3]))
                values = v0.new_zeros((len(batch), v0.shape[1], width, v0.shape[3]))
                for j, (kv, p) in enumerate(zip(kvs, plan.prefix_len, strict=True)):
                    if p:
                        keys[j, :, width - p:] = kv.layers[layer][0][0, :, :p]  # type: ignore[union-attr]
                        values[j, :, width - p:] = kv.layers[layer][1][0, :, :p]  # type: ignore[union-attr]
                cache.update(keys, values, layer)
        ids = torch.full((len(batch), suffix), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width + suffix), dtype=torch.long)
        for j, (r, p) in enumerate(zip(batch, plan.prefix_len, strict=True)):
            rest = r.prompt[p:]
            ids[j, suffix - len(rest):] = torch.tensor(rest)
            mask[j, width - p:width] = 1
            mask[j, width + suffix - len(rest):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # each token's position in its unsplit prompt
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos[:, width:], cache=cache)
        self._count_prefill(batch, plan.cached)
        return logits, mask, pos, cache

    def _batch_steps(self, batch: list[_Row], cancelled: Callable[[int], bool] | None,
                     store: PrefixStore | None = None) -> Iterator[list[_Row]]:
        """Decode a batch, yielding after every step the rows it finished."""
        import torch

        dev = self.model.device
        pad = self.tokenizer.pad_token_id
        gens = [torch.Generator().manual_seed(sample_seed(r.params.seed, r.index)) for r in batch]
        live = list(range(len(batch)))  # the batch row held by each row of the model's batch (and KV cache)
        # a single row goes to MKL's matrix-vector kernel, which copies nothing: no packing, no wrapped layers
        packs = self.packed_linears is not None and len(batch) > 1
        packing = self.packed_linears.installed() if packs else nullcontext(None)
        with torch.inference_mode(), packing as packed:
            if packs:
                packed.pack(len(batch))
            logits, mask, pos, cache = self._prefill(batch, store, max(r.max_new for r in batch))
            last_pos = pos[:, -1]
            while True:
                finished = []
                if cancelled is not None:  # a client went away: its rows stop here
                    for i in live:
                        if batch[i].finish is None and cancelled(batch[i].req):
                            batch[i].finish = "cancelled"
                            finished.append(batch[i])
                running = [j for j, i in enumerate(live) if batch[i].finish is None]
                if not running:
                    yield finished
                    break
                rows = [batch[live[j]] for j in running]
                step_logits = logits if len(running) == len(live) else logits[torch.tensor(running, device=dev)]
                nxt = sample_next(step_logits, [r.params.temperature for r in rows],
                                  [r.params.top_p for r in rows], [gens[live[j]] for j in running]).tolist()
                feed = [pad] * len(live)  # finished rows are fed padding and their outputs ignored
                for j, r, tok in zip(running, rows, nxt, strict=True):
                    r.out.append(tok)
                    feed[j] = tok
                    if tok in self.eos_ids or (r.params.stop and self._stop_hit(r)):
                        r.finish = "stop"
                    elif len(r.out) >= r.max_new:
                        r.finish = "length"
                    if r.finish is not None:
                        finished.append(r)
                self.tokens_generated += len(rows)
                count_tokens("generated", len(rows))
                keep = [j for j, i in enumerate(live) if batch[i].finish is None]
                if not keep:
                    yield finished
                    break
                if len(keep) <= len(live) // 4:  # few rows left: drop the finished ones from batch and cache
                    sel = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(sel)
                    mask, last_pos = mask[sel], last_pos[sel]
                    live, feed = [live[j] for j in keep], [feed[j] for j in keep]
                    left = max(batch[i].max_new - len(batch[i].out) for i in live)
                    if packs and len(live) > 1 and left >= REPACK_STEPS:
                        packed.pack(len(live))
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
                # finished rows keep their position, so an idle row never runs past the model's context
                last_pos = last_pos + torch.tensor([batch[i].finish is None for i in live], device=dev)
                logits = self._forward(input_ids=torch.tensor(feed, device=dev)[:, None], attention_mask=mask,
                                       position_ids=last_pos[:, None], cache=cache)
                yield finished
