"""CPU settings for TRL's fused LM head (trl.trainer.utils.add_fused_lm_head), which SFT and DPO use.

TRL computes per-token log-probs in [tokens, vocab] tiles without materialising the full logits. Its tile sizes
are tuned for GPUs: 4096 tokens x 32768 vocabulary columns, so on CPU a whole batch (a few thousand tokens) is
one tile, and its fp32 temporaries (exp, products, masks: about five tile-sized copies in the forward and again
in the backward) grow with the batch: ~1.3 GB for 8 rows of 256 tokens. On CPU we also score only the positions
that have a label, as TRL does on Triton devices (it scores every position elsewhere to keep tile shapes fixed
for compilers, which CPU eager mode does not need). The results are the same; only the tiling changes.

These are TRL internals (module-level names); `tests/test_training_lm_head.py` fails when a TRL upgrade moves
them, and at run time a missing name is skipped with a warning.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CPU_TOKEN_TILE = 1024  # tokens per tile: temporaries stay ~100 MB each whatever the batch
CPU_VOCAB_TILE = 16384  # 49152-token vocabularies (SmolLM2) split into 3 equal tiles instead of 32768 + 16384

_applied: list[bool] = []


def tune_for_cpu() -> bool:
    """Apply the CPU tiling and label-only scoring once per process; False when TRL's internals are not there."""
    if _applied:
        return _applied[0]
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as utils

    names = [(kernel, "TOKEN_CHUNK_SIZE"), (utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"), (utils, "_use_triton")]
    missing = [f"{m.__name__}.{n}" for m, n in names if not hasattr(m, n)]
    if missing:
        log.warning("TRL's fused LM head changed (%s missing): keeping its default tiling", ", ".join(missing))
        _applied.append(False)
        return False
    kernel.TOKEN_CHUNK_SIZE = min(kernel.TOKEN_CHUNK_SIZE, CPU_TOKEN_TILE)
    utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(utils._CHUNKED_LOGPROB_CHUNK_SIZE, CPU_VOCAB_TILE)
    on_triton = utils._use_triton

    def label_positions_only(device) -> bool:  # utils uses it only to choose "score labelled positions only"
        return device.type == "cpu" or on_triton(device)

    utils._use_triton = label_positions_only
    _applied.append(True)
    return True
