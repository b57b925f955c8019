"""Measure how well a draft model agrees with its target, for speculative decoding.

Prompts are fixed, evenly spaced windows of the held-out tail of the corpus
(the same character split the models were trained with), each prefixed with
the BOS token.  For every prompt the target is rolled out for a number of new
tokens, then both models score the whole sequence:

* greedy acceptance: along the target's greedy continuation, the fraction of
  positions where the draft's argmax equals the target's argmax;
* sampled acceptance: along a seeded temperature-1 target sample, the mean of
  sum_v min(p_v, q_v), the expected per-token acceptance probability of
  speculative rejection sampling (p = target, q = draft).

Uses transformers only.  Example:
    python scripts/measure_acceptance.py --corpus ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP workers that spin instead of sleeping waste most of a small, busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa: E402

Picker = Callable[[torch.Tensor], torch.Tensor]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--target", type=Path, default=Path("helix/assets/helix-tiny/target"))
    parser.add_argument("--draft", type=Path, default=Path("helix/assets/helix-tiny/draft"))
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens, excluding BOS")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def heldout_prompts(corpus: Path, tokenizer_dir: Path, val_fraction: float, count: int, length: int) -> torch.Tensor:
    """``count`` evenly spaced BOS-prefixed windows of ``length`` tokens from the held-out text."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = corpus.read_text(encoding="utf-8")
    heldout = text[int(len(text) * (1.0 - val_fraction)) :]
    ids = torch.tensor(tokenizer(heldout, add_special_tokens=False, verbose=False).input_ids)
    starts = torch.linspace(0, len(ids) - length, count).long()
    windows = ids[starts[:, None] + torch.arange(length)]
    bos = torch.full((count, 1), tokenizer.bos_token_id)
    return torch.cat([bos, windows], dim=1)


def load(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def rollout(model: PreTrainedModel, prompts: torch.Tensor, new_tokens: int, pick: Picker) -> torch.Tensor:
    """Extend every prompt by ``new_tokens`` tokens chosen by ``pick`` from the next-token logits."""
    out = model(input_ids=prompts, use_cache=True)
    sequence = prompts
    for step in range(new_tokens):
        token = pick(out.logits[:, -1].float())[:, None]
        sequence = torch.cat([sequence, token], dim=1)
        if step + 1 < new_tokens:
            out = model(input_ids=token, cache=out.cache, use_cache=True)
    return sequence


@torch.no_grad()
def continuation_logits(model: PreTrainedModel, sequence: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits at the positions that predict the continuation tokens."""
    return model(input_ids=sequence).logits[:, prompt_len - 1 : -1].float()


def greedy_acceptance(target: PreTrainedModel, draft: PreTrainedModel, prompts: torch.Tensor, new_tokens: int) -> float:
    sequence = rollout(target, prompts, new_tokens, lambda logits: logits.argmax(dim=-1))
    p = continuation_logits(target, sequence, prompts.shape[1])
    q = continuation_logits(draft, sequence, prompts.shape[1])
    return (p.argmax(dim=-1) == q.argmax(dim=-1)).float().mean().item()


def sampled_acceptance(
    target: PreTrainedModel, draft: PreTrainedModel, prompts: torch.Tensor, new_tokens: int, seed: int
) -> float:
    generator = torch.Generator().manual_seed(seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)

    sequence = rollout(target, prompts, new_tokens, sample)
    p = continuation_logits(target, sequence, prompts.shape[1]).softmax(dim=-1)
    q = continuation_logits(draft, sequence, prompts.shape[1]).softmax(dim=-1)
    return torch.minimum(p, q).sum(dim=-1).mean().item()


def main() -> None:
    args = parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prompts = heldout_prompts(args.corpus, args.target, args.val_fraction, args.prompts, args.prompt_len)
    target, draft = load(args.target), load(args.draft)
    greedy = greedy_acceptance(target, draft, prompts, args.new_tokens)
    sampled = sampled_acceptance(target, draft, prompts, args.new_tokens, args.seed)
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"prompts {args.prompts} x {args.prompt_len} tokens (+BOS), {args.new_tokens} target tokens each")
    print(f"greedy acceptance rate: {greedy:.4f}")
    print(f"sampled (T=1) acceptance rate: {sampled:.4f}")
    print(f"elapsed {time.time() - started:.1f}s")


if __name__ == "__main__":
    main()
