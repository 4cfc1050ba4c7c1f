"""Generation throughput of the transformers backend at batch 1, 4, 8, 16 on the default model.

Prints completion tokens/s per batch size for meditune's backend and, as the peer measured in the same run,
plain `model.generate` (greedy, left padding) on the same prompts; then the batch-16 / batch-1 ratio
(goal >= 7x) and our / transformers ratio per batch size. Medical questions that ask for detail, greedy,
max_new_tokens fixed, so every row normally runs to the limit and both sides do the same work.

    python bench/generation_throughput.py [--max-new-tokens 32[,256]] [--batches 1,4,8,16] [--repeats 3]
                                          [--dtype bfloat16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [
    "Explain in detail how type 2 diabetes damages the kidneys over time.",
    "Describe step by step how a doctor evaluates a patient with chest pain.",
    "Explain in detail the mechanism of action of ACE inhibitors.",
    "Describe the stages of wound healing and what can slow each of them.",
    "Explain in detail why antibiotic resistance develops and how to prevent it.",
    "Describe the symptoms, diagnosis and treatment of iron deficiency anemia.",
    "Explain in detail how vaccines train the immune system.",
    "Describe how asthma is diagnosed and how its treatment is stepped up.",
    "Explain in detail what happens in the body during a heart attack.",
    "Describe the main risk factors for stroke and how to reduce each one.",
    "Explain in detail how the liver processes alcohol.",
    "Describe the differences between viral and bacterial pneumonia.",
    "Explain in detail how insulin regulates blood glucose.",
    "Describe how chronic stress affects blood pressure and the heart.",
    "Explain in detail the causes and treatment of hypothyroidism.",
    "Describe how a migraine differs from a tension headache and how each is treated.",
]


def bench_ours(backend, batch: int, max_new: int, repeats: int) -> tuple[float, int]:
    from meditune.generation.base import GenerationRequest, SamplingParams

    reqs = [GenerationRequest(f"q{i}", [{"role": "user", "content": q}], SamplingParams(max_new_tokens=max_new))
            for i, q in enumerate(QUESTIONS[:batch])]
    backend.batch_size = batch
    tokens, start = 0, time.perf_counter()
    for _ in range(repeats):
        tokens += sum(g[0].completion_tokens for g in backend.generate(reqs))
    return time.perf_counter() - start, tokens


def bench_hf(backend, batch: int, max_new: int, repeats: int) -> tuple[float, int]:
    import torch

    from meditune.generation.base import GenerationRequest

    tok, model = backend.tokenizer, backend.model
    texts = [backend.prompt_text(GenerationRequest("x", [{"role": "user", "content": q}]))
             for q in QUESTIONS[:batch]]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    tokens, start = 0, time.perf_counter()
    for _ in range(repeats):
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        # count tokens up to and including the first EOS per row, as our backend does
        for row in new.tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in backend.eos_ids), len(row))
            tokens += n
    return time.perf_counter() - start, tokens


def packing_note(backend, batches: list[int]) -> str:
    """Pack the weights for each batch size up front and say how long it took and how many layers it covers."""
    import time

    packed = backend.packed_linears
    if packed is None:
        return "MKL weight packing: off (--pack-weights turns it on)"
    if not packed.enabled:
        return "MKL weight packing: off (not a float32 CPU model with MKL)"
    parts = []
    for b in batches:
        if b > 1:
            start = time.perf_counter()
            packed.pack(b)
            exact = sum(p is not None for p in packed.current)
            parts.append(f"batch {b}: {exact}/{len(packed.layers)} layers in {time.perf_counter() - start:.2f}s")
    return "MKL weight packing (once per batch size, exact layers only): " + ", ".join(parts)


def run_setting(backend, batches: list[int], max_new: int, repeats: int, peer: bool) -> dict[int, float]:
    """One table: best-of-rounds tokens/s per batch size for us and the peer, interleaved; returns our rates."""
    # Rounds interleave every configuration and each keeps its best round, so a burst of load from other
    # processes on a shared machine hits all configurations alike instead of skewing one of them.
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for _ in range(repeats):
        for b in batches:
            for side, fn in (("ours", bench_ours), ("peer", bench_hf)):
                if side == "peer" and not peer:
                    continue
                secs, toks = fn(backend, b, max_new, 1)
                if toks / secs > best.get((side, b), (0.0, 0))[0]:
                    best[(side, b)] = (toks / secs, toks)
    print(f"max_new_tokens={max_new}")
    print(f"{'batch':>5} | {'meditune tok/s':>14} | {'tokens':>6} | {'transformers tok/s':>18} | {'ours/peer':>9}")
    rates = {b: best[("ours", b)][0] for b in batches}
    for b in batches:
        peer_rate = f"{best[('peer', b)][0]:18.1f}" if ("peer", b) in best else ""
        ratio = f"{rates[b] / best[('peer', b)][0]:8.2f}x" if ("peer", b) in best else ""
        print(f"{b:>5} | {rates[b]:14.1f} | {best[('ours', b)][1]:>6} | {peer_rate:>18} | {ratio:>9}", flush=True)
    if 1 in rates:
        for b in batches:
            if b != 1:
                print(f"batch {b} / batch 1 throughput: {rates[b] / rates[1]:.2f}x")
        if 16 in rates:
            verdict = "meets" if rates[16] / rates[1] >= 7 else "misses"
            print(f"goal: batch 16 >= 7x batch 1 -> {verdict} ({rates[16] / rates[1]:.2f}x)")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32 or bfloat16")
    ap.add_argument("--max-new-tokens", default="32", help="one table per value, e.g. 32,256")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best round per setting counts")
    ap.add_argument("--no-peer", action="store_true", help="skip the transformers model.generate comparison")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--pack-weights", action="store_true", help="MKL-packed weights (BackendConfig.pack_weights)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from meditune.generation.base import BackendConfig
    from meditune.generation.factory import make_backend

    backend = make_backend(BackendConfig(model=args.model, dtype=args.dtype, pack_weights=args.pack_weights))
    batches = [int(b) for b in args.batches.split(",")]
    bench_ours(backend, 1, 4, 1)  # warm-up
    print(f"model={args.model} device={backend.model.device} dtype={backend.model.dtype} "
          f"torch_threads={torch.get_num_threads()} rounds={args.repeats} (best per setting) greedy "
          f"load_avg_1min={os.getloadavg()[0]:.2f}")
    print(packing_note(backend, batches))
    for max_new in (int(m) for m in args.max_new_tokens.split(",")):
        run_setting(backend, batches, max_new, args.repeats, not args.no_peer)
    print(f"load_avg_1min at the end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
