"""Load test of `meditune serve` on 127.0.0.1: can one huge request hold up small ones, and does SIGTERM stop it?

Starts `meditune serve MODEL` (default: the default model, CPU) with --max-tokens-limit LIMIT, then
  1. baseline: SMALL concurrent chat requests (max_tokens SMALL_TOKENS each), their latencies;
  2. the same SMALL requests sent while one huge request (max_tokens = LIMIT, the largest the server allows)
     is decoding; their latencies, and whether the huge one was still running when the last small one ended;
  3. SIGTERM while a huge request runs: seconds from the signal to the process exit, and what its client got.
Prints p50 / p95 latency (nearest rank) of the small requests with and without the huge one, their ratio,
the huge request's own duration (what every small request would wait behind a first-come worker), and the
SIGTERM-to-exit time. Bounded: 2 x SMALL + 2 requests, every client timeout --timeout seconds.

    python bench/serve_load.py [--model default] [--limit 512] [--small 20] [--small-tokens 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from meditune.generation.server import launch, sigterm_during_request

QUESTIONS = [
    "What is hypertension?", "Name a common antibiotic.", "What does insulin do?", "What causes anemia?",
    "Define tachycardia.", "What is a stroke?", "What is asthma?", "Name a symptom of flu.",
    "What organ makes bile?", "What is a normal heart rate?", "What is sepsis?", "What does the kidney do?",
    "What is a fever?", "Name a vaccine.", "What is COPD?", "What is a migraine?", "What is gout?",
    "What is an allergy?", "What is a fracture?", "What is obesity?",
]
HUGE_PROMPT = "Write a complete, very detailed textbook chapter on the cardiovascular system."


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def start(model: str, limit: int, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    env = {"PYTHONPATH": f"{Path(__file__).resolve().parents[1] / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        return launch([model, "--device", "cpu", "--max-tokens-limit", str(limit)], log, env=env, timeout_s=600)
    except RuntimeError as e:
        sys.exit(str(e))


def chat(url: str, text: str, max_tokens: int, timeout: float) -> tuple[float, dict]:
    """(seconds, response JSON) of one chat request."""
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", timeout=timeout,
                   json={"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                         "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()


def small_wave(url: str, n: int, tokens: int, timeout: float) -> list[float]:
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(chat, url, QUESTIONS[i % len(QUESTIONS)], tokens, timeout) for i in range(n)]
        return [f.result()[0] for f in futures]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=512, help="--max-tokens-limit of the server (the huge request)")
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--small-tokens", type=int, default=16)
    # 1 thread: on a shared, oversubscribed CPU OpenMP's spinning threads slow every step several-fold
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (0: leave as is)")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()

    log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "serve.log"
    proc, url = start(args.model, args.limit, args.threads, log)
    try:
        chat(url, "warm up", 4, args.timeout)
        base = small_wave(url, args.small, args.small_tokens, args.timeout)

        huge: dict = {}

        def run_huge() -> None:
            try:
                huge["s"], body = chat(url, HUGE_PROMPT, args.limit, args.timeout)
                huge["tokens"] = body["usage"]["completion_tokens"]
            except httpx.HTTPError as e:
                huge["error"] = f"{type(e).__name__} after {args.timeout:.0f} s timeout"

        t = threading.Thread(target=run_huge)
        t.start()
        time.sleep(1.0)  # the huge request is decoding
        loaded = small_wave(url, args.small, args.small_tokens, args.timeout)
        still_running = t.is_alive()
        t.join()

        exit_s, client = sigterm_during_request(
            proc, url, "/v1/chat/completions", {"messages": [{"role": "user", "content": HUGE_PROMPT}],
                                                "max_tokens": args.limit}, after_s=1.0, timeout_s=args.timeout)
    finally:
        if proc.poll() is None:
            proc.kill()

    n = args.small
    print(f"meditune serve {args.model}: {n} small requests (max_tokens {args.small_tokens}) x 2 waves, "
          f"huge request max_tokens {args.limit}")
    print(f"  small alone:         p50 {percentile(base, 50):6.2f} s  p95 {percentile(base, 95):6.2f} s  (n={n})")
    print(f"  small + huge:        p50 {percentile(loaded, 50):6.2f} s  p95 {percentile(loaded, 95):6.2f} s  "
          f"(n={n})  p95 ratio {percentile(loaded, 95) / percentile(base, 95):.2f}x")
    done = f"{huge['s']:6.2f} s for {huge['tokens']} tokens" if "s" in huge else huge.get("error", "?")
    print(f"  huge request:        {done}; still running when the small ones were done: {still_running}")
    print(f"  SIGTERM to exit:     {exit_s:6.2f} s (its long request's client got {client}; "
          f"exit status {proc.returncode})")


if __name__ == "__main__":
    main()
