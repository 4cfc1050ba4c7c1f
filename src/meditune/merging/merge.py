"""The merge driver: resolve inputs, validate, then stream every output tensor to sharded safetensors."""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from meditune.errors import ConfigError, MeditunError
from meditune.io import hash_obj, read_json, remove_tree, write_json, write_text
from meditune.merging.config import MergeSpec, evaluate
from meditune.merging.io import SafetensorsModel, ShardedWriter, TensorInfo, parse_size
from meditune.merging.lora import LoraModel, merge_with_peft, tensorwise_supported
from meditune.merging.methods import REQUIRED, Method, TensorJob, get_method
from meditune.merging.validate import Input, check_architecture, check_shared_ids, check_tensors

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 20  # 1M elements (4 MB in float32) per input chunk in flight
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"]
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


class VocabResized:
    """An input whose vocabulary tensors are padded (rows from `fill`) or truncated to `rows` rows."""

    def __init__(self, source: Any, names: set[str], rows: int, fill: Any, lookup: Callable[[str], str]):
        self.source, self.names_resized, self.rows, self.fill, self._lookup = source, names, rows, fill, lookup
        self.config, self.tensors = source.config, source.tensors

    def names(self) -> list[str]:
        return self.source.names()

    def info(self, name: str) -> TensorInfo:
        info = self.source.info(name)
        if name in self.names_resized or any(self._lookup(n) == name for n in self.names_resized):
            return TensorInfo(info.name, info.file, info.dtype, (self.rows, *info.shape[1:]), info.offset)
        return info

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        own = self.source.info(name).rows
        if start >= own and (name in self.names_resized or self._lookup(name) in self.names_resized):
            return self.fill(name, start, stop)
        if stop <= own:
            return self.source.read_rows(name, start, stop)
        return torch.cat([self.source.read_rows(name, start, own).float(), self.fill(name, own, stop).float()])


def open_source(spec: str, scratch: Path) -> tuple[Any, Path, Path]:
    """(tensor source, weights dir, tokenizer dir) for a model spec; adapters are merged into their base."""
    from meditune.models import resolve

    rm = resolve(spec)
    if rm.kind == "hub" and not Path(rm.path).is_dir():
        raise ConfigError(f"{spec!r} is not in the local hub cache; run `meditune models pull {spec}` first")
    if rm.kind != "adapter":
        return SafetensorsModel(rm.path), Path(rm.path), Path(rm.path)
    adapter = Path(rm.path)
    tok_dir = adapter if (adapter / "tokenizer_config.json").exists() else Path(rm.base.path)
    if tensorwise_supported(adapter):
        return LoraModel(SafetensorsModel(rm.base.path), adapter), Path(rm.base.path), tok_dir
    merged = merge_with_peft(spec, scratch / f"peft-merged-{hash_obj(str(adapter))[:10]}")
    return SafetensorsModel(merged), merged, tok_dir


def layer_position(name: str, n_layers: int) -> float:
    """mergekit's t for gradients: i / (L - 1) for layer i (1 when L == 1); 0 outside the layers."""
    m = LAYER_RE.search(name)
    if not m:
        return 0.0
    return int(m.group(1)) / (n_layers - 1) if n_layers > 1 else 1.0


def resolve_params(method: Method, spec: MergeSpec, per_specs: list[dict[str, Any]], name: str,
                   t: float, base: int | None = None,
                   labels: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Shared and per-input parameter values for one tensor (per-model > top-level > method default).

    A required per-model parameter must be given for every input but the base (which has no value).
    """
    shared = {}
    for key, default in method.shared.items():
        value = evaluate(spec.parameters[key], name, t) if key in spec.parameters else None
        if value is None:
            if default is REQUIRED:
                raise ConfigError(f"{method.name}: parameter '{key}' is required (no value for tensor {name})")
            value = default
        shared[key] = value
    per = []
    for i, own in enumerate(per_specs):
        vals = {}
        for key, default in method.per_model.items():
            value = None
            for scope in (own, spec.parameters):
                if key in scope:
                    value = evaluate(scope[key], name, t)
                    if value is not None:
                        break
            if value is None and default is REQUIRED and i != base:
                who = labels[i] if labels else f"input {i}"
                raise ConfigError(f"{method.name}: parameter '{key}' is required for every model but the base "
                                  f"(no value for {who} at tensor {name})")
            vals[key] = default if value is None else value
        per.append(vals)
    return shared, per


def _check_params(method: Method, spec: MergeSpec) -> None:
    known = set(method.shared) | set(method.per_model)
    for where, params in [("parameters", spec.parameters)] + [
            (f"models[{i}].parameters", m.parameters) for i, m in enumerate(spec.models)]:
        for key in params:
            if key not in known:
                raise ConfigError(f"{where}: unknown parameter '{key}' for {method.name}; "
                                  f"valid: {', '.join(sorted(known))}")


def _check_values(method: Method, shared: dict[str, Any], per: list[dict[str, Any]], base: int | None,
                  labels: list[str], name: str) -> None:
    """The method's range checks on one tensor's parameters, for every model but the base."""
    if method.check is None:
        return
    for i, values in enumerate(per):
        if i != base and (problem := method.check(shared, values)):
            raise ConfigError(f"{method.name}: {problem} (model {labels[i]}, tensor {name})")


def run_merge(spec: MergeSpec, out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Merge the models of `spec` into `out_dir` (resumable: finished shards of a killed run are kept)."""
    method = get_method(spec.merge_method)
    _check_params(method, spec)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    resuming = partial.is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    try:
        return _merge_into(spec, method, out_dir, partial, seed=seed, progress=progress)
    except BaseException as e:
        # a bad input leaves nothing behind; a crash keeps finished shards only when there are some to resume
        bad_input = isinstance(e, MeditunError)
        if partial.is_dir() and ((bad_input and not resuming) or not any(partial.glob("model*.safetensors"))):
            remove_tree(partial, inside=partial.parent)
        raise


def _merge_into(spec: MergeSpec, method: Method, out_dir: Path, partial: Path, *, seed: int,
                progress: bool) -> dict[str, Any]:
    """run_merge's work, writing into `partial` and renaming it to `out_dir` when done."""
    t0 = time.perf_counter()

    # Inputs: the listed models, plus the base first when the method needs one and it is not listed.
    inputs: list[Input] = []
    per_specs: list[dict[str, Any]] = []
    tok_dirs: dict[str, Path] = {}
    weight_dirs: dict[str, Path] = {}
    for i, entry in enumerate(spec.models):
        src, wdir, tdir = open_source(entry.model, partial)
        inputs.append(Input(entry.model, src, i))
        per_specs.append(entry.parameters)
        tok_dirs[entry.model], weight_dirs[entry.model] = tdir, wdir
    base: int | None = None
    if method.needs_base or (method.optional_base and spec.base_model):
        if not spec.base_model:
            raise ConfigError(f"{method.name} needs a base_model")
        labels = [inp.label for inp in inputs]
        if spec.base_model in labels:
            base = labels.index(spec.base_model)
        else:
            src, wdir, tdir = open_source(spec.base_model, partial)
            inputs.insert(0, Input(spec.base_model, src, -1))
            per_specs.insert(0, {})
            tok_dirs[spec.base_model], weight_dirs[spec.base_model] = tdir, wdir
            base = 0
    elif spec.base_model and spec.base_model not in tok_dirs:
        _src, weight_dirs[spec.base_model], tok_dirs[spec.base_model] = open_source(spec.base_model, partial)
    n = len(inputs)
    if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
        want = (f"exactly {method.min_inputs}" if method.min_inputs == method.max_inputs
                else f"at least {method.min_inputs}")
        raise ConfigError(f"{method.name} needs {want} models (base included); got {n}")
    n_other = n - int(base is not None)
    if n_other < method.min_non_base or (method.max_non_base is not None and n_other > method.max_non_base):
        want = (f"exactly {method.min_non_base}" if method.min_non_base == method.max_non_base
                else f"at least {method.min_non_base}")
        raise ConfigError(f"{method.name} needs {want} models besides the base; got {n_other}")

    check_architecture(inputs)
    ref = inputs[base if base is not None else 0]
    tok_label = _tokenizer_label(spec, ref.label, tok_dirs)
    tok_input = next((inp for inp in inputs if inp.label == tok_label), None)
    target_vocab = tok_input.source.config.get("vocab_size") if tok_input else None
    order = [ref] + [inp for inp in inputs if inp is not ref]
    names, resized = check_tensors(order, spec.resize_vocab, target_vocab)
    if resized:
        if tok_input is None:
            raise ConfigError("resize_vocab needs tokenizer_source to be one of the merged models")
        check_shared_ids({inp.label: tok_dirs[inp.label] for inp in inputs}, tok_label)
        fill = tok_input
        for inp in inputs:
            if inp is not fill:
                inp.source = VocabResized(inp.source, resized, int(target_vocab), _reader(fill), inp.lookup)

    cast = DTYPES[spec.dtype] if spec.dtype else None
    plan = []
    for name in names:
        infos = [inp.source.info(inp.lookup(name)) for inp in inputs]
        ref_info = ref.source.info(ref.lookup(name))
        floating = all(i.dtype.is_floating_point for i in infos)
        out = DTYPES.get(spec.out_dtype or spec.dtype or "", ref_info.dtype) if floating else ref_info.dtype
        plan.append((name, out, ref_info.shape if name not in resized else (int(target_vocab), *ref_info.shape[1:])))
    n_layers = int(ref.source.config.get("num_hidden_layers") or _count_layers(names))
    labels = [inp.label for inp in inputs]
    params = {}  # every tensor's parameters, resolved and checked before anything is written
    for name, out_dtype, _shape in plan:
        if out_dtype.is_floating_point:
            params[name] = resolve_params(method, spec, per_specs, name, layer_position(name, n_layers), base, labels)
            _check_values(method, *params[name], base, labels, name)
    writer = ShardedWriter(partial, plan, parse_size(spec.shard_size))
    fingerprint = hash_obj({"spec": spec.model_dump(mode="json"), "seed": seed, "plan": [
        (n_, str(d), s) for n_, d, s in plan], "inputs": [
        {k: (str(v.file), v.offset, str(v.dtype)) for k, v in inp.source.tensors.items()} for inp in inputs]})
    state_file = partial / "merge_state.json"
    if state_file.exists() and read_json(state_file).get("fingerprint") != fingerprint:
        for f in partial.glob("model*.safetensors*"):
            f.unlink()  # a different merge was interrupted here: start over
    write_json(state_file, {"fingerprint": fingerprint})
    done = writer.done_shards()

    try:
        for k, (name, out_dtype, shape) in enumerate(plan):
            if writer.shard_of[name] in done:
                continue
            writer.begin(name)
            if not out_dtype.is_floating_point:  # integer buffers: copied from the reference model
                writer.write(ref.source.read_rows(ref.lookup(name), 0, ref.source.info(ref.lookup(name)).rows))
            else:
                job = _job(name, shape, inputs, base, cast, spec.seed if spec.seed is not None else seed)
                shared, per = params[name]
                for chunk in method.run(job, shared, per):
                    writer.write(chunk)
            writer.end()
            if progress and k % 25 == 0:
                log.info("merged %d/%d tensors", k + 1, len(plan))
    except BaseException:
        writer.abort()
        raise
    writer.write_index()
    _write_config(ref, weight_dirs[ref.label], partial, plan, resized, target_vocab, spec)
    _copy_tokenizer(tok_dirs[tok_label], partial)
    summary = {"method": method.name, "models": [inp.label for inp in inputs],
               "base_model": inputs[base].label if base is not None else None, "tensors": len(plan),
               "shards": len(writer.files), "tokenizer_source": tok_label, "resized_vocab": sorted(resized),
               "seconds": round(time.perf_counter() - t0, 3), "seed": spec.seed if spec.seed is not None else seed}
    write_json(partial / "meditune_merge.json", {**summary, "config": spec.model_dump(mode="json")})
    for f in partial.glob("peft-merged-*"):
        remove_tree(f, inside=partial)
    state_file.unlink()
    if out_dir.exists():
        remove_tree(out_dir, inside=out_dir.parent)  # --force: never "." or "/"
    partial.rename(out_dir)
    return summary


def _reader(inp: Input) -> Callable[[str, int, int], torch.Tensor]:
    return lambda name, a, b: inp.source.read_rows(inp.lookup(name) or name, a, b)


def _job(name: str, shape: tuple[int, ...], inputs: list[Input], base: int | None,
         cast: torch.dtype | None, seed: int) -> TensorJob:
    stored = [inp.lookup(name) for inp in inputs]
    compute = (torch.float64 if all(inp.source.info(s).dtype == torch.float64 for inp, s in zip(inputs, stored, strict=True))
               and cast in (None, torch.float64) else torch.float32)

    def read(i: int, start: int, stop: int) -> torch.Tensor:
        x = inputs[i].source.read_rows(stored[i], start, stop)
        if cast is not None:
            x = x.to(cast)  # mergekit's `dtype`: inputs are cast to it before merging
        return x.to(compute)

    rows = shape[0] if shape else 1
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:]) if shape else 1))
    chunks = [(r, min(rows, r + step)) for r in range(0, rows, step)] or [(0, 0)]
    return TensorJob(name, tuple(shape), chunks, read, len(inputs), base, seed,
                     [inp.config_index for inp in inputs])


def _count_layers(names: list[str]) -> int:
    idx = {int(m.group(1)) for n in names if (m := LAYER_RE.search(n))}
    return max(idx) + 1 if idx else 1


def _tokenizer_label(spec: MergeSpec, ref_label: str, tok_dirs: dict[str, Path]) -> str:
    src = spec.tokenizer_source
    if src in (None, "base"):
        return spec.base_model or ref_label
    if src not in tok_dirs:
        raise ConfigError(f"tokenizer_source {src!r} is not one of the merged models: {', '.join(tok_dirs)}")
    return src


def _write_config(ref: Input, ref_dir: Path, out: Path, plan: list, resized: set[str],
                  target_vocab: int | None, spec: MergeSpec) -> None:
    cfg = dict(ref.source.config)
    float_dtypes = {str(d).removeprefix("torch.") for _, d, _ in plan if d.is_floating_point}
    if len(float_dtypes) == 1:
        cfg["dtype"] = cfg["torch_dtype"] = float_dtypes.pop()
        if "torch_dtype" not in ref.source.config:
            cfg.pop("torch_dtype")
    if resized and target_vocab:
        cfg["vocab_size"] = int(target_vocab)
    if any(name == "lm_head.weight" for name, _, _ in plan):
        cfg["tie_word_embeddings"] = False  # the merged head is stored and need not equal the embeddings
    write_json(out / "config.json", cfg)
    if (ref_dir / "generation_config.json").exists():
        shutil.copyfile(ref_dir / "generation_config.json", out / "generation_config.json")
    write_text(out / "merge_config.yaml", _yaml(spec))


def _yaml(spec: MergeSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def _copy_tokenizer(src: Path, out: Path) -> None:
    """Tokenizer files and chat template, from the chosen tokenizer source."""
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, out / f)
