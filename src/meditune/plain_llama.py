"""A Llama-architecture decoder in plain torch, and its tokenizer from `tokenizers` alone: log-likelihood scoring
on CPU without importing transformers.

Why: on the 2-core CPU a `meditune eval mcqa` run of 60 questions spends ~4 s of its 30-45 s importing
transformers' tokenizer and model code and building the model, while scoring needs only a float forward pass.
This module reads config.json, the safetensors weights and tokenizer.json directly (0.4 s) and runs the forward
with the same operations as transformers' LlamaForCausalLM (RMSNorm in float32, rotary embedding, grouped-query
SDPA attention, SwiGLU), with two changes that cost nothing in accuracy: the q/k/v and the gate/up
projections are each one matrix product, and the last layer's output projection and MLP run only at the
positions whose logits are kept. Per-option log-likelihoods agree with transformers' to ~1e-5 (tests/
test_plain_llama.py; bench/mcqa_parity.py against lm-eval).

Only what it reproduces exactly is taken (`plain_support` says why not otherwise, and the caller falls back to
transformers): model_type llama, SiLU, no biases, default rotary (no scaling), float32 on CPU, safetensors; the
tokenizer only when tokenizer_config.json asks for nothing transformers adds on top of tokenizer.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from meditune.evaluation.loglik_tree import active_segments, segment_attention

# tokenizer_config.json keys that only describe the tokenizer (anything else may change how transformers encodes)
_TOKENIZER_KEYS = {"backend", "bos_token", "eos_token", "pad_token", "unk_token", "is_local", "local_files_only",
                   "model_max_length", "tokenizer_class", "clean_up_tokenization_spaces", "added_tokens_decoder",
                   "chat_template", "model_input_names", "padding_side", "truncation_side", "errors",
                   "name_or_path"}
_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}  # tokenizer.json as is, no custom rebuild
_MAX_VOCAB = 100_000  # above it transformers may patch the pre-tokenizer's regex (Mistral tokenizers)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _rope_theta(cfg: dict[str, Any]) -> float | None:
    """The rotary base when the rotary embedding is the default one (no scaling), else None."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default" or cfg.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def plain_support(path: str | Path) -> str | None:
    """None when the plain forward reproduces this model directory, else why not."""
    root = Path(path)
    cfg = _read_json(root / "config.json")
    if cfg is None:
        return "no readable config.json"
    checks = [
        (cfg.get("model_type") == "llama" and cfg.get("architectures") == ["LlamaForCausalLM"],
         f"architecture {cfg.get('architectures')}"),
        (cfg.get("hidden_act", "silu") == "silu", f"activation {cfg.get('hidden_act')}"),
        (not cfg.get("attention_bias") and not cfg.get("mlp_bias"), "projection biases"),
        (cfg.get("pretraining_tp", 1) == 1, "pretraining_tp"),
        (_rope_theta(cfg) is not None, "rotary scaling"),
        (_weight_files(root) is not None, "no safetensors weights"),
    ]
    return next((why for ok, why in checks if not ok), None)


def tokenizer_support(path: str | Path) -> str | None:
    """None when tokenizer.json alone encodes as transformers' tokenizer of this directory does, else why not."""
    try:
        PlainTokenizer(path)
    except ValueError as e:
        return str(e)
    return None


def _weight_files(root: Path) -> list[Path] | None:
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    index = _read_json(root / "model.safetensors.index.json")
    if index is None or not isinstance(index.get("weight_map"), dict):
        return None
    files = sorted({root / Path(name).name for name in index["weight_map"].values()})
    return files if all(f.is_file() for f in files) else None


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _SafetensorsReader:
    """Reads tensors of safetensors files straight into freshly allocated float32 tensors (plain reads: no
    mapping of the file, whose touched pages would stay resident beside the fused copies, and no second copy)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, int, int, str, list[int]]] = {}
        for f in files:
            try:
                with f.open("rb") as fh:
                    size = int.from_bytes(fh.read(8), "little")
                    header = json.loads(fh.read(size))
                for name, info in header.items():
                    if name != "__metadata__":
                        begin, end = info["data_offsets"]
                        self._where[name] = (f, 8 + size + begin, end - begin, info["dtype"], list(info["shape"]))
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{f.name}: not a readable safetensors header ({e})") from None

    @property
    def left(self) -> list[str]:
        """Tensors not read yet."""
        return list(self._where)

    def skip(self, name: str) -> None:
        self._where.pop(name, None)

    def read(self, *names: str) -> torch.Tensor:
        """The named tensors, stacked along their first dimension (one tensor: itself), as float32."""
        shapes = []
        for name in names:
            if name not in self._where or self._where[name][3] not in _ST_DTYPES:
                raise ValueError(f"weight {name} missing or not float32/float16/bfloat16")
            shapes.append(self._where[name][4])
        if not all(shapes) or len({tuple(s[1:]) for s in shapes}) != 1:
            raise ValueError(f"weights {names} do not stack")
        out = torch.empty([sum(s[0] for s in shapes)] + shapes[0][1:], dtype=torch.float32)
        row = 0
        for name, shape in zip(names, shapes, strict=True):
            self._read_into(name, out[row:row + shape[0]])
            row += shape[0]
        return out

    def _read_into(self, name: str, out: torch.Tensor) -> None:
        path, start, size, dtype, shape = self._where.pop(name)
        src = _ST_DTYPES[dtype]
        if size != out.numel() * src.itemsize:
            raise ValueError(f"weight {name}: {size} bytes for shape {shape}")
        buf = out.view(torch.uint8) if src == torch.float32 else torch.empty(size, dtype=torch.uint8)
        with path.open("rb") as fh:
            fh.seek(start)
            if fh.readinto(buf.numpy().reshape(-1)) != size:
                raise ValueError(f"weight {name}: file {path.name} is truncated")
        if src != torch.float32:
            out.copy_(buf.view(src).reshape(out.shape))


class PlainTokenizer:
    """What scoring asks of a tokenizer (encode, decode, special tokens, window), from tokenizer.json.

    Raises ValueError (the reason) when tokenizer_config.json asks for something transformers adds on top of
    tokenizer.json; the file is parsed once, by `tokenizers`, and checked on the loaded object.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        root = Path(path)
        conf = _read_json(root / "tokenizer_config.json")
        if conf is None or not (root / "tokenizer.json").is_file():
            raise ValueError("no tokenizer.json / tokenizer_config.json")
        if conf.get("tokenizer_class") not in _TOKENIZER_CLASSES:
            raise ValueError(f"tokenizer class {conf.get('tokenizer_class')}")
        extra = sorted(set(conf) - _TOKENIZER_KEYS)
        if extra:
            raise ValueError(f"tokenizer settings {extra}")
        try:
            self._tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as e:  # the Rust loader raises its own exception type
            raise ValueError(f"unreadable tokenizer.json ({e})") from None
        tok = self._tok
        if tok.post_processor is None or tok.truncation or tok.padding:
            raise ValueError("tokenizer.json post-processor, truncation or padding")
        if tok.get_vocab_size(with_added_tokens=True) > _MAX_VOCAB:
            raise ValueError("vocabulary over 100k")
        added = {t.content for t in tok.get_added_tokens_decoder().values()}
        wanted = {_token_text(v) for k, v in conf.items() if k.endswith("_token")}
        wanted |= {_token_text(t) for t in (conf.get("added_tokens_decoder") or {}).values()}
        if not wanted - {None} <= added:  # transformers would add them to the vocabulary
            raise ValueError("special tokens missing from tokenizer.json")
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = (
            _token_text(conf.get(f"{name}_token")) for name in ("bos", "eos", "pad", "unk"))
        self.model_max_length = int(conf.get("model_max_length") or 1_000_000_000_000)
        self.chat_template = None  # rendering chat needs transformers' tokenizer (models.load_tokenizer)

    def _id(self, text: str | None) -> int | None:
        return self._tok.token_to_id(text) if text is not None else None

    # ids follow the token strings, as in transformers (models.set_pad_token sets pad_token only)
    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: int | list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([ids] if isinstance(ids, int) else list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def _token_text(value: Any) -> str | None:
    """A special token's text from tokenizer_config.json (a string or an AddedToken mapping)."""
    return value if isinstance(value, str) or value is None else (value or {}).get("content")


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [q; k; v] rows: one matrix product for the three projections
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [gate; up] rows
    down: torch.Tensor


class PlainLlama:
    """Inference-only LlamaForCausalLM forward: `model(input_ids=..., position_ids=..., logits_to_keep=...)`.

    Attention is causal, or per question under tree masks while `loglik_tree.tree_attention_on` is active (the
    packed scoring path reads the same segments as transformers models do).
    """

    own_tree_attention = True  # loglik_tree: attention reads the packed segments itself

    def __init__(self, path: str | Path):
        root = Path(path)
        cfg = _read_json(root / "config.json") or {}
        why = plain_support(root)
        if why:
            raise ValueError(f"{root}: the plain forward does not cover this model ({why})")
        self.config = SimpleNamespace(**cfg)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads",
                                                                        cfg["num_attention_heads"])
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        weights = _SafetensorsReader(_weight_files(root) or [])
        take = weights.read
        self.embed = take("model.embed_tokens.weight")
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            qkv = take(*(p + f"self_attn.{x}_proj.weight" for x in "qkv"))
            gate_up = take(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
            self.layers.append(_Layer(take(p + "input_layernorm.weight"), qkv, take(p + "self_attn.o_proj.weight"),
                                      take(p + "post_attention_layernorm.weight"), gate_up,
                                      take(p + "mlp.down_proj.weight")))
        self.norm = take("model.norm.weight")
        tied = cfg.get("tie_word_embeddings", False)  # LlamaConfig's default; tied, a saved lm_head is ignored
        self.lm_head = self.embed if tied else take("lm_head.weight")
        weights.skip("lm_head.weight")
        if weights.left:
            raise ValueError(f"{root}: weights the plain forward does not use: {sorted(weights.left)[:3]}")
        dim = self.head_dim
        theta = _rope_theta(cfg)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = (self.inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attention(self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        nq, nk = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = F.linear(h, layer.qkv).split([nq, nk, nk], dim=-1)
        q = self._rotate(q.view(b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = self._rotate(k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        segments, scale = active_segments(), self.head_dim ** -0.5
        if segments is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, scale=scale,
                                                 enable_gqa=self.heads != self.kv_heads)
            out = out.transpose(1, 2)
        else:
            out = segment_attention(q, k, v, segments, scale)
        return out.reshape(b, t, nq)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                logits_to_keep: torch.Tensor | int = 0, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False) -> SimpleNamespace:
        """Logits [batch, kept positions, vocab]: all positions (logits_to_keep=0), the last n (an int), or
        those marked in a boolean [batch, positions] tensor (batch 1). No padding and no KV cache: a padded
        batch or a cache is refused, never silently ignored."""
        if use_cache or (attention_mask is not None and not bool(attention_mask.all())):
            raise TypeError("the plain forward takes neither padding masks nor a KV cache")
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t).expand(b, t)
        cos, sin = self._rotary(position_ids)
        h = F.embedding(input_ids, self.embed)
        keep = self._kept(logits_to_keep, b, t)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            attn = self._attention(layer, self._norm(h, layer.input_norm), cos, sin)
            if i == last and keep is not None:  # only kept positions go on to the head
                h, attn = h[:, keep], attn[:, keep]
            h = h + F.linear(attn, layer.o)
            gate, up = F.linear(self._norm(h, layer.post_norm), layer.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.down)
        return SimpleNamespace(logits=F.linear(self._norm(h, self.norm), self.lm_head))

    __call__ = forward

    @staticmethod
    def _kept(logits_to_keep: torch.Tensor | int, b: int, t: int) -> torch.Tensor | None:
        """Position index of the kept logits (None: all)."""
        if isinstance(logits_to_keep, int):
            return None if logits_to_keep <= 0 or logits_to_keep >= t else torch.arange(t - logits_to_keep, t)
        mask = logits_to_keep.reshape(-1, t)
        if mask.dtype != torch.bool or mask.shape[0] != 1 or b != 1:
            raise TypeError("logits_to_keep: a boolean mask of one packed row")
        return mask[0].nonzero().flatten()
