"""What a speculative step costs as K grows, with every draft accepted.

Batch 1, dummy TinyLlama-1.1B target and 68M draft (bf16), prompt 128, 256
greedy new tokens, `spec_synthetic_acceptance=1.0` (every step emits K + 1
tokens), fixed K in 1, 2, 4, 6; each with the greedy draft-loop graph and
with pass-by-pass draft launches. A step's time against K separates the
per-step cost of speculating from the cost of each further draft.

    PYTHONPATH=. python3 benchmarks/spec_step_cost.py
"""

from __future__ import annotations

import time

import torch

from helix import LLM, SamplingParams

NEW_TOKENS = 256


def main() -> None:
    prompts = [[(7 * j) % 30000 + 1 for j in range(128)]]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for k in (1, 2, 4, 6):
        for loop in (True, False):
            llm = LLM("tinyllama-1.1b", load_format="dummy", draft_model="llama-68m", num_kv_blocks=2048,
                      max_model_len=2048, max_num_seqs=1, speculation_mode="fixed", num_speculative_tokens=k,
                      spec_synthetic_acceptance=1.0)
            if not loop:
                llm.engine.runner.proposer.loop = None
            llm.generate(prompts, params, use_tqdm=False)  # warm-up
            times = []
            for _ in range(3):
                torch.cuda.synchronize()
                started = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            best = min(times)
            steps = NEW_TOKENS / (k + 1)
            print(f"K={k} loop={loop}: {NEW_TOKENS / best:7.1f} tok/s  {best / steps * 1e3:6.3f} ms/step", flush=True)
            del llm
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
