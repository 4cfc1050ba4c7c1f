"""Lazy safetensors reading and streaming sharded writing, a row range at a time.

Why not `safetensors.safe_open`: it memory-maps whole shards, and every page a merge touches stays in the
process's resident set until the map is closed, so merging three models would count all three in RSS.
The format is simple (8-byte header length, JSON header, raw little-endian data), so we read exactly the
byte range of the rows we need with pread and keep peak memory at the few chunks in flight.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meditune.errors import InputError
from meditune.io import read_json, write_json

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the tensor's data in the file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_elems(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one safetensors file's header into TensorInfo by name."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InputError("not a safetensors file (shorter than 8 bytes)", file=path)
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise InputError(f"not a safetensors file (header length {n})", file=path)
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read safetensors header: {e}", file=path) from None
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in ST_DTYPES:
            raise InputError(f"unsupported dtype {meta.get('dtype')!r}", file=path, line=name, field="dtype")
        begin, _end = meta["data_offsets"]
        out[name] = TensorInfo(name, path, ST_DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + n + begin)
    return out


class SafetensorsModel:
    """A model directory's tensors, read lazily a row range at a time."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.tensors: dict[str, TensorInfo] = {}
        index = self.dir / INDEX_NAME
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputError("no 'weight_map' mapping", file=index, field="weight_map")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            bins = [p.name for p in self.dir.glob("*.bin")]
            hint = f" (found {bins[0]}: pickle weights are not loaded; convert to safetensors)" if bins else ""
            raise InputError(f"no .safetensors weights{hint}", file=self.dir)
        for fname in files:
            for name, info in read_header(self.dir / fname).items():
                if name in self.tensors:
                    raise InputError(f"tensor {name!r} appears in two shards", file=self.dir / fname)
                self.tensors[name] = info
        self.config: dict[str, Any] = read_json(self.dir / "config.json") if (self.dir / "config.json").exists() else {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (the whole tensor for 0-d ones), in its stored dtype."""
        info = self.tensors[name]
        if not info.shape:
            start, stop = 0, 1
        itemsize = torch.empty((), dtype=info.dtype).element_size()
        nbytes = (stop - start) * info.row_elems * itemsize
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        if nbytes == 0:
            return torch.empty(shape, dtype=info.dtype)
        buf = bytearray(nbytes)
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.offset + start * info.row_elems * itemsize)
            got = f.readinto(buf)
        if got != nbytes:
            raise InputError(f"truncated tensor data ({got} of {nbytes} bytes)", file=info.file, line=name)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(shape)

    def read(self, name: str) -> torch.Tensor:
        """A whole tensor."""
        return self.read_rows(name, 0, self.tensors[name].rows)


@dataclass
class _Planned:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1.5G' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise InputError(f"cannot read size {text!r}; use e.g. 2GB or 500MB", field="shard_size") from None


class ShardedWriter:
    """Writes planned tensors into safetensors shards, streaming each tensor's rows straight to disk.

    All shapes are known before merging, so every shard's header (with offsets) is written first and the
    data follows in plan order; a shard is written as `<name>.tmp` and renamed when complete, so a killed
    merge keeps its finished shards and `done_shards()` tells a resumed run which tensors to skip.
    """

    def __init__(self, out_dir: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int):
        self.dir = Path(out_dir)
        self.shards: list[list[_Planned]] = [[]]
        size = 0
        for name, dtype, shape in plan:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if self.shards[-1] and size + nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(_Planned(name, dtype, tuple(shape), nbytes))
            size += nbytes
        n = len(self.shards)
        self.files = (["model.safetensors"] if n == 1
                      else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.shard_of = {t.name: i for i, shard in enumerate(self.shards) for t in shard}
        self._fh = None
        self._shard = -1
        self._pending: list[_Planned] = []
        self._written = 0

    def done_shards(self) -> set[int]:
        """Shards already complete on disk (from an earlier, interrupted run of the same plan)."""
        return {i for i, f in enumerate(self.files) if (self.dir / f).exists()}

    def begin(self, name: str) -> None:
        """Start writing tensor `name` (must follow plan order within its shard)."""
        i = self.shard_of[name]
        if i != self._shard:
            self._close_shard()
            self._open_shard(i)
        if not self._pending or self._pending[0].name != name:
            raise RuntimeError(f"tensor {name!r} written out of plan order")
        self._written = 0

    def write(self, chunk: torch.Tensor) -> None:
        """Append the next rows of the current tensor."""
        t = self._pending[0]
        data = chunk.to(t.dtype).contiguous()
        if data.numel():  # raw bytes via a uint8 view: numpy has no bfloat16
            self._fh.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        self._written += data.numel() * data.element_size()

    def end(self) -> None:
        """Finish the current tensor; closes its shard when it was the shard's last."""
        t = self._pending.pop(0)
        if self._written != t.nbytes:
            raise RuntimeError(f"tensor {t.name}: wrote {self._written} bytes, planned {t.nbytes}")
        if not self._pending:
            self._close_shard()

    def _open_shard(self, i: int) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[i]:
            header[t.name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes, as safetensors does
        self._tmp = self.dir / (self.files[i] + ".tmp")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close_shard
        self._fh.write(struct.pack("<Q", len(blob)) + blob)
        self._shard = i
        self._pending = list(self.shards[i])

    def _close_shard(self) -> None:
        if self._fh is None:
            return
        if self._pending:
            raise RuntimeError(f"shard {self.files[self._shard]} closed with tensors missing")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self._tmp, self.dir / self.files[self._shard])

    def abort(self) -> None:
        """Close (without completing) a shard left open by an error."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write_index(self) -> None:
        """Write model.safetensors.index.json when there is more than one shard."""
        if len(self.files) == 1:
            return
        total = sum(t.nbytes for shard in self.shards for t in shard)
        weight_map = {t.name: self.files[i] for i, shard in enumerate(self.shards) for t in shard}
        write_json(self.dir / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
