"""DPO with the prompt computed once per pair instead of twice.

TRL's DPOTrainer feeds the model 2B rows, [chosen_1..B, rejected_1..B], each `prompt + completion`, so every
prompt goes through the network twice. Here each pair becomes one row, `prompt + chosen + p' + rejected`, where
p' repeats the prompt's last token at its original position: with a block attention mask (chosen and rejected
both see the prompt, never each other) and explicit position ids, every token has the same context as in the
unpacked rows, so the per-token log-probs are the same up to float rounding. TRL's loss code is left as it is:
the outputs are mapped back to the [2B, L-1] layout it expects. Fewer tokens means less activation memory and
less compute per step; how much depends on the prompt's share of a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# fields of TRL's FusedCausalLMOutput that hold one value per (row, position)
PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@dataclass
class PackedPairs:
    """Packed inputs for B pairs and, per original (row, position), where its output lies in the packed outputs."""

    input_ids: torch.Tensor  # [B, S]
    position_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = may attend
    labels: torch.Tensor  # [B, S]
    source: torch.Tensor  # [2B, L-1] index into packed outputs flattened as [B * (S-1)], or -1 (output 0)


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Tokens before the first completion label of each row (the whole row when it has no completion left)."""
    has_label = labels != -100
    first = has_label.int().argmax(dim=1)
    return torch.where(has_label.any(dim=1), first, attention_mask.sum(dim=1))


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> PackedPairs | None:
    """Pack [chosen; rejected] rows pair by pair; None when the rows are not pairs sharing a prompt."""
    rows, length = input_ids.shape
    if rows % 2 or attention_mask is None or attention_mask.dim() != 2:
        return None
    b = rows // 2
    lens = attention_mask.sum(dim=1)
    if not bool((attention_mask == (torch.arange(length, device=input_ids.device) < lens[:, None])).all()):
        return None  # the layout must be flushed left (TRL's collator does this)
    p = prompt_lengths(labels, attention_mask)
    if not bool((p[:b] == p[b:]).all()) or int(p.min()) < 1:
        return None
    c, r = lens[:b] - p[:b], lens[b:] - p[b:]
    same_prompt = torch.arange(length, device=input_ids.device)[None, :] < p[:b, None]
    if not bool(((input_ids[:b] == input_ids[b:]) | ~same_prompt).all()):
        return None
    p, c, r = p[:b].tolist(), c.tolist(), r.tolist()
    size = max(pi + ci + 1 + ri for pi, ci, ri in zip(p, c, r, strict=True))
    dev = input_ids.device
    ids = torch.zeros((b, size), dtype=input_ids.dtype, device=dev)
    pos = torch.zeros((b, size), dtype=torch.long, device=dev)
    lab = torch.full((b, size), -100, dtype=labels.dtype, device=dev)
    seg = torch.full((b, size), -1, dtype=torch.long, device=dev)  # 0 prompt, 1 chosen, 2 p' + rejected, -1 pad
    source = torch.full((rows, length - 1), -1, dtype=torch.long, device=dev)
    for i, (pi, ci, ri) in enumerate(zip(p, c, r, strict=True)):
        ch, rj = input_ids[i], input_ids[b + i]
        ids[i, :pi + ci] = ch[:pi + ci]
        ids[i, pi + ci] = ch[pi - 1]
        ids[i, pi + ci + 1:pi + ci + 1 + ri] = rj[pi:pi + ri]
        pos[i, :pi + ci] = torch.arange(pi + ci, device=dev)
        pos[i, pi + ci:pi + ci + 1 + ri] = torch.arange(pi - 1, pi + ri, device=dev)
        lab[i, pi:pi + ci] = labels[i, pi:pi + ci]
        lab[i, pi + ci + 1:pi + ci + 1 + ri] = labels[b + i, pi:pi + ri]
        seg[i, :pi], seg[i, pi:pi + ci], seg[i, pi + ci:pi + ci + 1 + ri] = 0, 1, 2
        # output t of a row predicts its token t+1; chosen keeps its positions, rejected moves by c + 1
        base = i * (size - 1)
        t = torch.arange(pi - 1, pi + ci - 1, device=dev)
        source[i, t] = base + t
        t = torch.arange(pi - 1, pi + ri - 1, device=dev)
        source[b + i, t] = base + t + ci + 1
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones((size, size), dtype=torch.bool, device=dev).tril()
    allowed = causal & (k != -1) & (q != -1) & ((k == q) | (k == 0))
    for i, pi in enumerate(p):
        allowed[i, seg[i] == 2, pi - 1] = False  # the rejected block sees p' instead of the prompt's last token
    allowed |= torch.eye(size, dtype=torch.bool, device=dev)  # pads attend to themselves: no all-masked rows
    return PackedPairs(ids, pos, allowed[:, None], lab, source)


def unpack(packed: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """[2B, L-1] from [B, S-1] outputs (0 where the original row has no label); gradients flow back."""
    flat = torch.cat([packed.reshape(-1), packed.new_zeros(1)])
    return flat[torch.where(source < 0, flat.numel() - 1, source)]


def shared_prompt_forward(fused_forward: Any):
    """Wrap a forward patched by TRL's add_fused_lm_head so DPO calls (fused_lm_head=True) run packed pairs."""
    warned = []

    def forward(*args: Any, fused_lm_head: bool = False, labels: torch.Tensor | None = None, **kwargs: Any):
        input_ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        packed = None
        other_inputs = [k for k in ("position_ids", "inputs_embeds", "shift_labels") if kwargs.get(k) is not None]
        if fused_lm_head and not args and labels is not None and input_ids is not None and not other_inputs:
            packed = pack_pairs(input_ids, mask, labels)
            if packed is None and not warned:
                warned.append(True)
                log.warning("DPO batch is not [chosen; rejected] pairs sharing a prompt: running it unpacked")
        if packed is None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        kwargs.update(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                      position_ids=packed.position_ids)
        kwargs.pop("inputs_embeds", None)
        out = fused_forward(fused_lm_head=True, labels=packed.labels, **kwargs)
        forward.packed_calls += 1
        for name in PER_TOKEN_FIELDS:
            value = getattr(out, name, None)
            if value is not None:
                setattr(out, name, unpack(value, packed.source))
        out.label_mask = labels[:, 1:] != -100
        out.loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
        return out

    forward.meditune_shared_prompt = True
    forward.packed_calls = 0  # how many calls ran packed (tests and logs)
    forward.unpacked = fused_forward
    return forward


def install(model: Any) -> bool:
    """Put the packed forward on the causal LM under a (PEFT) model; False when TRL's fused head is not there."""
    from peft import PeftModel

    target = model.get_base_model() if isinstance(model, PeftModel) else model
    current = target.__dict__.get("forward")
    if current is None:  # TRL patches the instance; without that patch there is nothing to wrap
        return False
    if not getattr(current, "meditune_shared_prompt", False):
        target.forward = shared_prompt_forward(current)
    return True


_TRAINER_CLASS: list[type] = []


def shared_prompt_dpo_trainer() -> type:
    """A TRL DPOTrainer whose policy (and reference model, if any) runs packed pairs, the reference log-prob
    precomputation included: it starts inside DPOTrainer.__init__, right after TRL adds its fused LM head."""
    if _TRAINER_CLASS:
        return _TRAINER_CLASS[0]
    from trl import DPOTrainer

    class SharedPromptDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._install_shared_prompt()

        def _install_shared_prompt(self) -> None:
            for m in (self.model, self.ref_model):
                if m is not None and not install(m):
                    log.warning("TRL's fused LM head is missing on %s: DPO runs unpacked", type(m).__name__)

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any):
            self._install_shared_prompt()
            return super()._precompute_ref_logps(*args, **kwargs)

    _TRAINER_CLASS.append(SharedPromptDPOTrainer)
    return SharedPromptDPOTrainer
