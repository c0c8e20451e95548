#!/usr/bin/env python3
"""Generation speed through the Ollama stand-in vs llama-cpp-python called directly.

Same GGUF (Gemma 3 270M Q4_K_M), same context size, threads, prompt, greedy
sampling and token budget; runs alternate so both see the same machine state.
Prints TTFT and generation tokens/s side by side (client-side clocks for both).
Target: the stand-in within 5% of direct.

    .venv/bin/python benchmarks/bench_standin.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tests.conftest  # noqa: E402,F401  (puts lab/, the stand-in and the collection on the path)
from tests.standin.conftest import MODEL, StandIn, import_lab_model, lab_model_path  # noqa: E402

PROMPT = ("Air-gapped networks keep sensitive systems away from the internet. "
          "Explain in a few paragraphs how an operator moves software into one:")
THREADS = 2
NUM_CTX = 4096


def through_standin(client, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in client.generate(model=MODEL, prompt=PROMPT, raw=True, stream=True,
                                 options={"num_predict": tokens, "temperature": 0,
                                          "num_ctx": NUM_CTX, "stop": []}):
        if chunk.response and first is None:
            first = time.perf_counter()
        if chunk.done:
            count = chunk.eval_count
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first), count


def direct(llama, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in llama.create_completion(PROMPT, max_tokens=tokens, temperature=0,
                                         top_k=40, top_p=0.9, min_p=0.0,
                                         repeat_penalty=1.1, stream=True):
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
            count += 1
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    import tempfile

    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        server = StandIn(Path(tmp) / "models", OLLAMA_NUM_THREADS=str(THREADS))
        try:
            client = server.client()
            import_lab_model(client)
            client.generate(model=MODEL, prompt="", keep_alive="10m",
                            options={"num_ctx": NUM_CTX})
            llama = Llama(model_path=str(lab_model_path()), n_ctx=NUM_CTX,
                          n_threads=THREADS, n_batch=512, verbose=False)
            results = {"direct": [], "stand-in": []}
            through_standin(client, 8)  # warm both paths once
            direct(llama, 8)
            for _ in range(args.runs):
                # A pause after each run: llama.cpp's OpenMP threads spin for a while
                # after work, and would steal a core from the next measurement.
                results["direct"].append(direct(llama, args.tokens))
                time.sleep(0.5)
                results["stand-in"].append(through_standin(client, args.tokens))
                time.sleep(0.5)
        finally:
            server.stop()

    print(f"Gemma 3 270M Q4_K_M, {THREADS} threads, num_ctx {NUM_CTX}, greedy, "
          f"{args.tokens} tokens, {args.runs} runs (median)")
    print("direct: llama-cpp-python create_completion in this process; stand-in: "
          "/api/generate streamed through the official ollama client")
    print(f"{'path':<10} {'TTFT ms':>9} {'gen tok/s':>10} {'tokens':>7}")
    medians = {}
    for path, rows in results.items():
        ttft = statistics.median(r[0] for r in rows) * 1000
        rate = statistics.median(r[1] for r in rows)
        medians[path] = (ttft, rate)
        print(f"{path:<10} {ttft:>9.1f} {rate:>10.1f} {rows[0][2]:>7}")
    for path in ("stand-in",):
        ratio = medians[path][1] / medians["direct"][1]
        print(f"{path} / direct: tokens/s {ratio:.3f} (target >= 0.95), TTFT "
              f"{medians[path][0] / medians['direct'][0]:.3f}x "
              f"({medians[path][0] - medians['direct'][0]:+.1f} ms)")


if __name__ == "__main__":
    main()
