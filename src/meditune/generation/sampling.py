"""Per-sample random streams and token sampling shared by the local backends.

Why our own sampler instead of `model.generate(do_sample=True)`: transformers draws every row of a batch from
one global RNG, so a sample depends on which other requests share its batch. Here each (seed, sample index)
owns a `torch.Generator`, so the random draws of a sample are the same whatever batch it lands in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meditune.errors import ConfigError
from meditune.generation.base import GenerationRequest, SamplingParams


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample `index` of a request whose params carry `seed`."""
    digest = hashlib.sha256(f"meditune:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def check_params(params: SamplingParams, where: str) -> None:
    """Reject sampling settings no backend can honour, naming the request."""
    if params.n < 1:
        raise ConfigError(f"{where}: n must be >= 1 (got {params.n})")
    if params.temperature < 0:
        raise ConfigError(f"{where}: temperature must be >= 0 (got {params.temperature})")
    if not 0 < params.top_p <= 1:
        raise ConfigError(f"{where}: top_p must be in (0, 1] (got {params.top_p})")
    if params.max_new_tokens < 1:
        raise ConfigError(f"{where}: max_new_tokens must be >= 1 (got {params.max_new_tokens})")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise ConfigError(f"{where}: stop strings must be non-empty strings (got {list(params.stop)!r})")


def check_request(req: GenerationRequest) -> None:
    """Validate a request's shape (messages or prompt) and its sampling params."""
    where = f"request {req.id!r}"
    if req.prompt_ids is not None and (req.prompt is None or not req.prompt_ids):
        raise ConfigError(f"{where}: prompt_ids need the prompt text too, and at least one token")
    if req.prompt is None:
        if not req.messages:
            raise ConfigError(f"{where}: give either messages or prompt")
        for i, m in enumerate(req.messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ConfigError(f"{where}: messages[{i}] must be {{'role': str, 'content': str}}")
    elif req.prefill:
        raise ConfigError(f"{where}: prefill continues a chat answer; a raw prompt can simply end with it")
    check_params(req.params, where)


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string (as lm-eval's `until`); returns (text, whether one was found)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sample_next(logits, temperatures, top_ps, generators):
    """Next token per row: greedy where temperature is 0, else temperature + nucleus sampling.

    Each sampling row draws one uniform number from its own generator and inverts the (top-p truncated) CDF,
    so the draw is independent of the other rows.
    """
    import torch

    greedy = logits.argmax(dim=-1)
    rows = [i for i, t in enumerate(temperatures) if t > 0]
    if not rows:
        return greedy
    idx = torch.tensor(rows, device=logits.device)
    temps = torch.tensor([temperatures[i] for i in rows], device=logits.device, dtype=torch.float32)
    probs = torch.softmax(logits[idx].float() / temps[:, None], dim=-1)
    u = torch.stack([torch.rand((), generator=generators[i]) for i in rows]).to(logits.device)
    if any(top_ps[i] < 1 for i in rows):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        tp = torch.tensor([top_ps[i] for i in rows], device=logits.device)[:, None]
        sorted_p = sorted_p.masked_fill(cum - sorted_p >= tp, 0.0)  # keep the smallest set reaching top_p
        cum = sorted_p.cumsum(dim=-1)
        pos = torch.searchsorted(cum, (u * cum[:, -1])[:, None]).clamp(max=cum.shape[-1] - 1)
        picked = order.gather(-1, pos).squeeze(-1)
    else:
        cum = probs.cumsum(dim=-1)
        picked = torch.searchsorted(cum, (u * cum[:, -1])[:, None]).clamp(max=cum.shape[-1] - 1).squeeze(-1)
    out = greedy.clone()
    out[idx] = picked
    return out
