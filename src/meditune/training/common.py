"""Options shared by every training stage, model loading for training and the TRL argument mapping."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from meditune.errors import ConfigError
from meditune.io import remove_tree
from meditune.model_ref import ModelRef, ModelRefOwner, model_ref_field
from meditune.stages import MODEL_DEFAULTS, StageConfig, apply_recipe_defaults

log = logging.getLogger(__name__)

class TrainOptions(StageConfig, ModelRefOwner):
    """Settings every training stage has (a stage config subclasses this and adds its own); model, seed, device,
    dtype, trust_remote_code and system_prompt left unset (or null) are the recipe's."""

    recipe_defaults = MODEL_DEFAULTS
    model_keys_after = "seed"

    model: ModelRef = model_ref_field()  # unset: the recipe's; the spec accepts "@stage"
    data: str | list[str] = Field(description="JSONL of records, or a data source spec")
    eval_data: str | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="held out from data when eval_data is unset")
    method: Literal["lora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"
    learning_rate: float | None = Field(None, gt=0.0)  # None: the stage's default
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    activation_checkpointing: bool = False  # trades ~20-30 % speed for activation memory
    checkpoint_every: int = Field(1, ge=1, description="with activation_checkpointing: recompute only every n-th "
                                  "decoder layer (1 = all); the others keep their activations")
    seed: int | None = None  # unset: the recipe seed
    system_prompt: str | None = None  # unset: the recipe's; "": none; "model-default": the template's own
    report_to: list[str] = Field(default_factory=list)  # e.g. ["wandb"]; CSV + TensorBoard are always written
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(0, ge=0)  # > 0: checkpoints for resuming a killed run
    save_merged: bool = False  # LoRA: also write the merged full model
    # any field of the stage's TRL config (trl_config), passed through; see training/trl_options.py
    trl: dict[str, Any] = Field(default_factory=dict)
    trl_config: ClassVar[str] = "SFTConfig"

    @field_validator("trl")
    @classmethod
    def _known_trl_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        from meditune.training.trl_options import unknown_key_error

        if v and (err := unknown_key_error(cls.trl_config, list(v))):
            raise ValueError(err)
        return v

    @model_validator(mode="after")
    def _trl_conflicts(self) -> TrainOptions:
        from meditune.training.trl_options import conflict_error

        if self.trl and (err := conflict_error(self.trl, type(self).model_fields, self.model_fields_set)):
            raise ValueError(err)
        return self

    @field_validator("report_to")
    @classmethod
    def _known_reporters(cls, v: list[str]) -> list[str]:
        known = {"wandb", "tensorboard", "mlflow", "comet_ml", "trackio", "none"}
        bad = [r for r in v if r not in known]
        if bad:
            raise ValueError(f"unknown report_to {bad}; use some of {sorted(known)}")
        return v


@dataclass
class Settings:
    """Recipe defaults merged with the stage's own options."""

    model: ModelRef  # every setting filled
    seed: int
    system_prompt: str | None


def settings(cfg: TrainOptions, recipe: Any) -> Settings:
    """Stage options with recipe-wide defaults filled in (meditune.stages.apply_recipe_defaults)."""
    cfg = apply_recipe_defaults(cfg, recipe)
    return Settings(model=cfg.model, seed=cfg.seed, system_prompt=cfg.system_prompt)


def base_model_dir(ref: ModelRef, stage_dir: Path) -> tuple[str, str]:
    """(directory of full weights to train from, spec to record as base).

    An adapter input (e.g. "@sft" of a LoRA SFT) is merged once into stage_dir/base, because a new adapter must
    sit on full weights for meditune.models to load it later.
    """
    from meditune.models import resolve

    spec = ref.spec_or_default
    rm = resolve(spec)
    if rm.kind != "adapter":
        if rm.kind == "hub" and not Path(rm.path).is_dir():
            from meditune.models import hub_snapshot

            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise ConfigError(f"{spec!r} is not in the local hub cache and HF_HUB_OFFLINE=1")
            return str(hub_snapshot(spec, download=True)), spec
        return rm.path, spec
    out = stage_dir / "base"
    if not (out / "config.json").exists():
        from meditune.models import load_model

        log.info("merging adapter %s into %s to train on top of it", spec, out)
        model, tok = load_model(rm, device="cpu", dtype="float32", trust_remote_code=bool(ref.trust_remote_code))
        tmp = out.with_name(f"base.partial{os.environ.get('RANK', '')}")  # one per process under torchrun
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same merge first
            remove_tree(tmp, inside=stage_dir)
    return str(out), str(out)


def load_causal_lm(path: str, s: Settings):
    """(model, tokenizer) ready for training: safetensors only, pad token set, in the chosen dtype (the trainer
    places it on its device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meditune.models import pick_device, pick_dtype, set_pad_token

    ref = s.model
    dev = pick_device(ref.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(ref.dtype, dev), use_safetensors=True,
                                                 trust_remote_code=ref.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=ref.trust_remote_code)
    set_pad_token(tok, model)
    return model, tok


def lora_config(cfg: TrainOptions, task_type: str = "CAUSAL_LM"):
    """PEFT LoraConfig from the stage options, or None for full fine-tuning."""
    if cfg.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type=task_type, bias="none")


def trainer_kwargs(cfg: TrainOptions, s: Settings, out_dir: Path, *, default_lr: float,
                   has_eval: bool = False) -> dict[str, Any]:
    """Keyword arguments shared by every TRL *Config (a transformers TrainingArguments subclass)."""
    import torch

    from meditune.models import pick_device, pick_dtype

    dev = pick_device(s.model.device)
    dtype = pick_dtype(s.model.dtype, dev)
    if dev == "cpu":
        from meditune.training.lm_head import tune_for_cpu

        tune_for_cpu()  # every TRL trainer is configured here: bounded LM-head tiles before any of them runs
    report = [r for r in cfg.report_to if r not in ("tensorboard", "none")]  # our callback writes TensorBoard
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=cfg.learning_rate or default_lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        activation_checkpointing=cfg.activation_checkpointing,
        activation_checkpointing_kwargs={"every_n_layers": cfg.checkpoint_every} if cfg.checkpoint_every > 1 else None,
        seed=s.seed,
        data_seed=s.seed,
        # TRL defaults bf16=True even on CPU; we train in the weights' dtype (fp32 on CPU, bf16 on CUDA).
        bf16=dtype == torch.bfloat16 and dev.startswith("cuda"),
        fp16=False,
        use_cpu=dev == "cpu",
        logging_steps=cfg.logging_steps,
        include_num_input_tokens_seen="non_padding",  # the stage's "tokens trained" (meditune.cost)
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        eval_strategy="epoch" if has_eval else "no",
        report_to=report or "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA and full models use every trainable parameter each step
        ddp_backend="gloo" if dev == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest checkpoint of a killed run, to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = out_dir / "checkpoints"
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def make_dataset(rows: list[dict[str, Any]], stage_dir: Path, name: str):
    """A datasets.Dataset of rows; under several processes it is backed by files in stage_dir, so caches that
    TRL shares between ranks by file name (precomputed reference log-probs) resolve to the same place."""
    from datasets import Dataset

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dataset.from_list(rows)
    from accelerate import PartialState
    from datasets import load_dataset

    from meditune.io import write_jsonl

    state = PartialState()
    path = stage_dir / "data" / f"{name}.jsonl"
    with state.main_process_first():  # rank 0 writes and converts first; the others reuse its arrow files
        if state.is_main_process:
            write_jsonl(path, rows)
        return load_dataset("json", data_files=str(path), split="train", cache_dir=str(stage_dir / "data" / "cache"))
