"""Decode speed of the embedded helix-tiny pair on the CPU: plain decoding
against speculation (adaptive K, and fixed K = 4), greedy and sampled at
temperature 1, on held-out Tiny Shakespeare prompts; batch 1 (one prompt at a
time) or a batch of --batch prompts at once.

    python benchmarks/cpu_speculation.py [--max-tokens 128] [--repeats 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from helix import LLM, SamplingParams
from helix.engine_args import embedded_model_path

PROMPTS = [
    "ANTONIO:\nIt is the quality o' the climate.\n\nSEBASTIAN:\n",
    "Just as my master had direction:\nGrumio gave order how it should be done.\n\nGRUMIO:\n",
    "And that he does I weep: myself am Naples,\nWho with mine eyes, never since at ebb, beheld\n",
    "Forgot you! no, sir: I could not forget you, for I\nnever saw you before in all my life.\n\n",
]
CONFIGS = {
    "plain": dict(model=embedded_model_path("target")),  # the target alone: no draft, no speculation
    "speculative, adaptive K": dict(),
    "speculative, K = 4": dict(speculation_mode="fixed", num_speculative_tokens=4),
}


def tokens_per_second(llm: LLM, params: SamplingParams, repeats: int, batch: int) -> float:
    """Median over repeats of output tokens / wall time."""
    llm.generate(PROMPTS[:1], params, use_tqdm=False)  # warm-up
    batches = [[p] for p in PROMPTS] if batch == 1 else [[PROMPTS[i % len(PROMPTS)] for i in range(batch)]]
    rates = []
    for _ in range(repeats):
        tokens, started = 0, time.perf_counter()
        for prompts in batches:
            tokens += sum(len(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False))
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    modes = {"greedy": 0.0, "temperature 1": 1.0}
    print("| decoding | " + " | ".join(f"{m} tok/s | accept" for m in modes) + " |")
    print("| --- |" + " --- | --- |" * len(modes))
    baseline: dict[str, float] = {}
    for name, options in CONFIGS.items():
        cells = []
        for mode, temperature in modes.items():
            llm = LLM(device="cpu", num_kv_blocks=512, enable_prefix_caching=False, **options)
            params = SamplingParams(temperature=temperature, max_tokens=args.max_tokens, ignore_eos=True, seed=0)
            rate = tokens_per_second(llm, params, args.repeats, args.batch)
            baseline.setdefault(mode, rate)
            accept = llm.stats()["acceptance_rate"]
            cells.append(f"{rate:.1f} ({rate / baseline[mode]:.2f}x) | {accept:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
