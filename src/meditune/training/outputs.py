"""What every training stage leaves behind: weights (safetensors), tokenizer, curves, summary and model card."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

from meditune.io import remove_tree, write_json, write_text
from meditune.versions import package_versions

log = logging.getLogger(__name__)


def CurvesCallback(out_dir: Path) -> Any:  # noqa: N802 - a class in use; built lazily to keep imports light
    """A TrainerCallback writing every logged metric to curves.csv and TensorBoard (see CurveLog)."""
    from transformers import TrainerCallback

    cls = type("CurvesCallback", (CurveLog, TrainerCallback), {})
    return cls(out_dir)


class CurveLog:
    """Writes every logged metric to curves.csv (atomically rewritten) and to TensorBoard, on the main process."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.rows: list[dict[str, Any]] = []
        self._tb = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        self.rows.append(row)
        self._write_csv()
        log.info("step %d: %s", state.global_step,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "epoch")))
        tb = self._writer()
        if tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    tb.add_scalar(k.replace("_", "/", 1) if "/" not in k else k, v, state.global_step)
            tb.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: the CSV always exists
                return None
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        return self._tb

    def _write_csv(self) -> None:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(self.rows)
        write_text(self.out_dir / "curves.csv", buf.getvalue())

    def losses(self, key: str = "loss") -> list[float]:
        """The logged values of one metric, in order."""
        return [r[key] for r in self.rows if key in r]


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): meditune.distributed's ranks."""
    from meditune.distributed import env_ranks

    return env_ranks().is_main


def save_model(model: Any, tokenizer: Any, out_dir: Path, *, base_spec: str, lora: bool,
               save_merged: bool) -> dict[str, str]:
    """Save weights as safetensors with the tokenizer (chat template included); returns output paths by name.

    LoRA: `model` is the adapter dir (with meditune_base.json naming the base spec); with save_merged also
    `merged`, the full merged model. Full fine-tune: `model` is the full model dir.
    """
    out_dir = Path(out_dir)
    outs: dict[str, str] = {}
    target = out_dir / "model"
    tmp = out_dir / "model.partial"
    remove_tree(tmp, inside=out_dir)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if lora:
        write_json(tmp / "meditune_base.json", {"base": base_spec})
    remove_tree(target, inside=out_dir)
    os.replace(tmp, target)  # a killed save never leaves a half-written model behind
    outs["model"] = str(target)
    if lora and save_merged:
        merged_dir = out_dir / "merged"
        tmp = out_dir / "merged.partial"
        remove_tree(tmp, inside=out_dir)
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        remove_tree(merged_dir, inside=out_dir)
        os.replace(tmp, merged_dir)
        outs["merged"] = str(merged_dir)
    return outs


def write_model_card(out_dir: Path, *, stage: str, base_spec: str, method: str, data: Any,
                     hyperparameters: dict[str, Any], metrics: dict[str, Any], extra: str = "") -> Path:
    """README.md model card: what was trained from what, how, on which data, and the final metrics."""
    hp = "\n".join(f"| {k} | {v} |" for k, v in hyperparameters.items())
    mt = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    data_list = data if isinstance(data, list) else [data]
    card = f"""---
library_name: {"peft" if method == "lora" else "transformers"}
base_model: {base_spec}
tags: [meditune, {stage}, medical]
---
# {stage.upper()} model trained with meditune

- **Stage:** `{stage}` ({"LoRA adapter" if method == "lora" else "full fine-tune"})
- **Base model:** `{base_spec}`
- **Data:** {", ".join(f"`{d}`" for d in data_list)}
- **Software:** {versions}

## Hyperparameters
| name | value |
|---|---|
{hp}

## Final metrics
| name | value |
|---|---|
{mt}

Training curves: `curves.csv` and `tensorboard/` next to this card.
{extra}
## Intended use
Research on medical language models only. Not a medical device; outputs are not medical advice and must not
be used for diagnosis or treatment without review by a qualified professional.
"""
    path = Path(out_dir) / "README.md"
    write_text(path, card)
    return path
