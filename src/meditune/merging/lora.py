"""LoRA adapters as merge inputs: merged into their base first, tensor by tensor when possible.

For plain LoRA (Linear, Conv1D with fan_in_fan_out, Embedding) the merged weight's rows are
W[rows] + scale * (B @ A)[rows] with scale = alpha / r (alpha / sqrt(r) with rsLoRA), computed a chunk of
rows at a time, so an adapter costs no more memory than a full model input. Variants whose merge is not
a plain low-rank sum (DoRA, rank/alpha patterns, layer replication) fall back to peft's merge_and_unload,
which loads the whole model once.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from meditune.errors import InputError
from meditune.io import read_json
from meditune.merging.io import SafetensorsModel, TensorInfo, read_header

log = logging.getLogger(__name__)

PREFIX = "base_model.model."


def tensorwise_supported(adapter_dir: Path) -> bool:
    """Whether the adapter's merge is a plain low-rank sum we can do tensor by tensor."""
    cfg = read_json(adapter_dir / "adapter_config.json")
    return (cfg.get("peft_type", "LORA") == "LORA" and not cfg.get("use_dora") and not cfg.get("rank_pattern")
            and not cfg.get("alpha_pattern") and not cfg.get("layer_replication")
            and (adapter_dir / "adapter_model.safetensors").exists())


class LoraModel:
    """A base model with a LoRA adapter merged in on read (same interface as SafetensorsModel)."""

    def __init__(self, base: SafetensorsModel, adapter_dir: str | Path):
        self.base = base
        self.dir = Path(adapter_dir)
        self.config: dict[str, Any] = base.config
        cfg = read_json(self.dir / "adapter_config.json")
        r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
        self.scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self.adapter = SafetensorsModel.__new__(SafetensorsModel)  # header-only view of the adapter file
        self.adapter.dir = self.dir
        self.adapter.tensors = read_header(self.dir / "adapter_model.safetensors")
        self.lora: dict[str, tuple[str, str, bool]] = {}  # base tensor -> (A key, B key, transposed)
        self.replaced: dict[str, str] = {}  # base tensor -> adapter key holding its full replacement
        for key in self.adapter.tensors:
            name = key.removeprefix(PREFIX)
            for kind, transposed in ((".lora_A.weight", self.fan_in_fan_out), (".lora_embedding_A", True)):
                if name.endswith(kind):
                    module = name[: -len(kind)]
                    b_key = key[: -len(kind)] + kind.replace("_A", "_B")
                    if b_key not in self.adapter.tensors:
                        raise InputError(f"{key} has no matching {b_key}", file=self.dir / "adapter_model.safetensors")
                    self.lora[module + ".weight"] = (key, b_key, transposed)
            if "lora_" not in name:
                # peft saves modules_to_save as <module>.modules_to_save[.<adapter>].<param>
                target = re.sub(r"\.modules_to_save(\.default)?\.", ".", name)
                self.replaced[target] = key
        for target in [*self.lora, *self.replaced]:
            if target not in base.tensors:
                raise InputError(f"adapter tensor for {target!r} has no such tensor in the base model {base.dir}",
                                 file=self.dir / "adapter_model.safetensors", line=target)
        self.tensors = base.tensors

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows of the merged weight (float32 where a LoRA delta is added)."""
        if name in self.replaced:
            return self.adapter.read_rows(self.replaced[name], start, stop)
        w = self.base.read_rows(name, start, stop)
        if name not in self.lora:
            return w
        a_key, b_key, transposed = self.lora[name]
        a, b = self.adapter.read(a_key).float(), self.adapter.read(b_key).float()
        if transposed:  # delta = (B @ A).T: its rows are columns of B @ A
            delta = (b @ a[:, start:stop]).T
        else:
            delta = b[start:stop] @ a
        return w.float() + self.scale * delta

    def read(self, name: str) -> torch.Tensor:
        return self.read_rows(name, 0, self.info(name).rows)


def merge_with_peft(adapter_spec: str, out_dir: Path) -> Path:
    """Fallback: merge an adapter with peft's merge_and_unload and save the result as safetensors."""
    from meditune.models import load_model

    log.warning("adapter %s needs peft's merge (not a plain LoRA): loading the whole model once", adapter_spec)
    model, _tok = load_model(adapter_spec, device="cpu", dtype="float32", merge_adapter=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
