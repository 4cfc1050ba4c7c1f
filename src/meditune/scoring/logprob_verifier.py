"""A constrained verdict for small local judges: compare the next-token probability of "True" and "False".

Same prompt as the published verifier ("Is this true or false? Answer in one word.", system "Be precise and
concise."), but instead of parsing free text the verdict is whichever of the two words the judge finds more
likely as its reply's first token. Small models rarely answer in one word, so free-text parsing turns almost
every verdict into "bad"; this mode always yields true/false. It is an extension, not the published protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meditune.cost import count_tokens
from meditune.model_ref import ModelRef
from meditune.scoring.base import ScoreInput
from meditune.scoring.dahl import JudgeVerifier, Verdict

TRUE_WORDS = ("True", "true", " True", " true", "TRUE")
FALSE_WORDS = ("False", "false", " False", " false", "FALSE")


class LogprobJudgeVerifier:
    """Verdict = argmax over {True, False} of the judge's first-token probability (local transformers models)."""

    name = "judge_logprob"

    def __init__(self, model: ModelRef, *, batch_size: int = 16, grounded: bool = False):
        self.model, self.batch_size = model, batch_size
        self.prompts = JudgeVerifier(None, grounded=grounded)  # type: ignore[arg-type]  # only builds requests
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from meditune.models import load_shared_model, load_tokenizer

            model, _ = load_shared_model(self.model)
            tok = load_tokenizer(self.model)  # own copy: left padding
            tok.padding_side = "left"
            ids_t = sorted({tok.encode(w, add_special_tokens=False)[0] for w in TRUE_WORDS})
            ids_f = sorted({tok.encode(w, add_special_tokens=False)[0] for w in FALSE_WORDS})
            self._loaded = (model, tok, ids_t, ids_f)
        return self._loaded

    def verify(self, pairs: Sequence[tuple[ScoreInput, str]]) -> list[tuple[Verdict, dict[str, Any]]]:
        import torch

        from meditune.chat import render_chat

        model, tok, ids_t, ids_f = self._load()
        out: list[tuple[Verdict, dict[str, Any]]] = []
        texts = [render_chat(tok, self.prompts.request(k, item, fact).messages) for k, (item, fact) in
                 enumerate(pairs)]
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                logits = model(**enc).logits[:, -1, :].float()
            count_tokens("scored", int(enc["attention_mask"].sum()))
            probs = logits.softmax(-1)
            p_true = probs[:, ids_t].sum(-1)
            p_false = probs[:, ids_f].sum(-1)
            for pt, pf in zip(p_true.tolist(), p_false.tolist(), strict=True):
                share = pt / (pt + pf) if pt + pf > 0 else 0.5
                out.append(("true" if pt > pf else "false",
                            {"p_true": round(share, 4), "mass": round(pt + pf, 4)}))
        return out
