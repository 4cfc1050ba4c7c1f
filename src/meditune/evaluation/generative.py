"""Generative multiple choice: greedy answers to the rendered prompt, then the chosen letter by
meditune.letters' `lm_eval` cascade (as lm-eval's kormedmcqa filter; no match = unparseable, counted)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meditune.cost import count_tokens
from meditune.generation.sampling import truncate_at_stop
from meditune.letters import parse_choice

# Stop strings of lm-eval's kormedmcqa task, minus "." (which would cut "C. Because..." before the letter on
# some models; extraction handles the rest) - see docs/evaluation-mcqa.md.
DEFAULT_STOP = ("Q:", "</s>", "<|im_end|>", "\n\n")


def extract_choice(text: str, n_options: int) -> int | None:
    """0-based option index named in a generated answer, or None (meditune.letters, `lm_eval` cascade)."""
    return parse_choice(text, n_options, "lm_eval")


@dataclass
class GenOut:
    """One greedy completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    truncated_tokens: int = 0


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 32,
                   stop: Sequence[str] = DEFAULT_STOP, batch_size: int = 8, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, max_length: int | None = None,
                   progress: Callable[[int], None] | None = None) -> list[GenOut]:
    """Complete raw prompts (already chat-rendered when wanted), batched and sorted by length."""
    import torch

    from meditune.evaluation.loglik import TokenEncoder, model_max_length

    enc = TokenEncoder(tokenizer)
    window = (max_length or model_max_length(model, tokenizer)) - max_new_tokens
    if window <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in the context window")
    encoded = [enc.encode(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outs: list[GenOut | None] = [None] * len(prompts)
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop:
        gen_kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [encoded[i][-window:] for i in idx]  # left truncation, as lm-eval's generate_until
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):  # left padding for generation
                ids[r, width - len(s):] = torch.tensor(s)
                mask[r, width - len(s):] = 1
            if temperature > 0:
                torch.manual_seed(seed + start)
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 **gen_kwargs)
            for r, i in enumerate(idx):
                new = gen[r, width:].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id)]
                while new and new[-1] == pad:
                    new.pop()
                raw = tokenizer.decode(new, skip_special_tokens=True)
                text, stopped = truncate_at_stop(raw, stop)
                finish = "stop" if stopped or len(new) < max_new_tokens else "length"
                outs[i] = GenOut(text, len(seqs[r]), len(new), finish, len(encoded[i]) - len(seqs[r]))
                count_tokens("generated", len(new))
            if progress:
                progress(len(idx))
    return outs  # type: ignore[return-value]
