"""Train helix-tiny: a byte-level BPE tokenizer, a small Llama target and a distilled draft.

The corpus is split by characters: the first 90% trains the tokenizer and both
models, the last 10% is held out for validation.  The target is trained with
cross-entropy; the draft (about ten times smaller) is trained by distillation
from the finished target so the pair agrees well enough for speculative
decoding.  Both models are written in Hugging Face format with the same
tokenizer, weights stored as bfloat16.

Example:
    python scripts/train_tiny.py --corpus ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP workers that spin instead of sleeping waste most of a small, busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings for one training phase."""

    steps: int
    lr: float
    warmup: int
    eval_every: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--out", type=Path, default=Path("helix/assets/helix-tiny"))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seq-len", type=int, default=256, help="training window including the BOS token")
    parser.add_argument("--target-steps", type=int, default=600)
    parser.add_argument("--target-lr", type=float, default=3e-3)
    parser.add_argument("--target-batch", type=int, default=16)
    parser.add_argument("--draft-steps", type=int, default=300)
    parser.add_argument("--draft-lr", type=float, default=4e-3)
    parser.add_argument("--draft-batch", type=int, default=16)
    parser.add_argument("--distill-temperature", type=float, default=1.0)
    parser.add_argument(
        "--distill-ce-weight", type=float, default=0.0, help="weight of data cross-entropy in the draft loss"
    )
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=100)
    return parser.parse_args()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def split_corpus(text: str, val_fraction: float) -> tuple[str, str]:
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE that prepends <|endoftext|> as BOS to every encoded sequence."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    bos_id = tokenizer.token_to_id(EOT)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, bos_id)]
    )
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` without the BOS token."""
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def llama_config(
    vocab_size: int, bos_id: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=bos_id,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def with_bos(windows: torch.Tensor, bos_id: int) -> torch.Tensor:
    bos = torch.full((windows.shape[0], 1), bos_id, dtype=windows.dtype)
    return torch.cat([bos, windows], dim=1)


def random_batches(
    tokens: torch.Tensor, seq_len: int, batch_size: int, bos_id: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless stream of BOS-prefixed random windows in a seed-determined order."""
    generator = torch.Generator().manual_seed(seed)
    body = seq_len - 1
    offsets = torch.arange(body)
    while True:
        starts = torch.randint(0, len(tokens) - body, (batch_size,), generator=generator)
        yield with_bos(tokens[starts[:, None] + offsets], bos_id)


def eval_windows(tokens: torch.Tensor, seq_len: int, bos_id: int) -> torch.Tensor:
    """All non-overlapping BOS-prefixed windows of the held-out tokens."""
    body = seq_len - 1
    count = len(tokens) // body
    return with_bos(tokens[: count * body].view(count, body), bos_id)


def lm_loss(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int = 16) -> float:
    model.eval()
    total = 0.0
    for chunk in windows.split(batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=chunk).logits
        total += lm_loss(logits, chunk).item() * len(chunk)
    model.train()
    return total / len(windows)


def cosine_lr(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def fit(
    name: str,
    model: LlamaForCausalLM,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterator[torch.Tensor],
    val: torch.Tensor,
    spec: TrainSpec,
) -> tuple[float, float]:
    """AdamW with warmup + cosine decay.

    Returns the mean training loss over the last evaluation interval and the final validation loss.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    recent: list[float] = []
    train_loss = val_loss = math.nan
    started = time.time()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, spec)
        loss = loss_fn(next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % spec.eval_every == 0 or step + 1 == spec.steps:
            train_loss = sum(recent) / len(recent)
            val_loss = evaluate(model, val)
            print(f"[{name}] step {step + 1}/{spec.steps} train {train_loss:.4f} val {val_loss:.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
            recent.clear()
    return train_loss, val_loss


def target_loss(model: LlamaForCausalLM) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=batch).logits
        return lm_loss(logits, batch)

    return loss_fn


def distill_loss(
    draft: LlamaForCausalLM, target: LlamaForCausalLM, temperature: float, ce_weight: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward KL(target || draft) at ``temperature``, optionally mixed with data cross-entropy."""

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            teacher = target(input_ids=batch).logits[:, :-1].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = draft(input_ids=batch).logits
        student = logits[:, :-1].float()
        kl = F.kl_div(
            F.log_softmax(student / temperature, dim=-1).flatten(0, 1),
            F.log_softmax(teacher / temperature, dim=-1).flatten(0, 1),
            log_target=True,
            reduction="batchmean",
        ) * temperature**2
        if ce_weight == 0.0:
            return kl
        return (1.0 - ce_weight) * kl + ce_weight * lm_loss(logits, batch)

    return loss_fn


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        # A chat turn ends at <|im_end|>: stop there too, not only at <|endoftext|>.
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)


def main() -> None:
    args = parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    train_text, val_text = split_corpus(args.corpus.read_text(encoding="utf-8"), args.val_fraction)
    raw_tokenizer = train_tokenizer(train_text, args.vocab_size)
    tokenizer = wrap_tokenizer(raw_tokenizer, max_length=1024)
    bos_id = tokenizer.bos_token_id
    train_tokens, val_tokens = encode(raw_tokenizer, train_text), encode(raw_tokenizer, val_text)
    val = eval_windows(val_tokens, args.seq_len, bos_id)
    print(f"tokenizer: vocab {raw_tokenizer.get_vocab_size()}, train {len(train_tokens)} tokens, "
          f"val {len(val_tokens)} tokens, bos/eos/pad id {bos_id}", flush=True)

    vocab = raw_tokenizer.get_vocab_size()
    target = LlamaForCausalLM(llama_config(vocab, bos_id, hidden=256, layers=6, heads=8, kv_heads=4, intermediate=768))
    draft = LlamaForCausalLM(llama_config(vocab, bos_id, hidden=96, layers=2, heads=4, kv_heads=2, intermediate=256))
    print(f"target parameters {count_parameters(target):,}, draft parameters {count_parameters(draft):,}", flush=True)

    target_spec = TrainSpec(args.target_steps, args.target_lr, args.warmup, args.eval_every)
    target_batches = random_batches(train_tokens, args.seq_len, args.target_batch, bos_id, args.seed)
    target_train, target_val = fit("target", target, target_loss(target), target_batches, val, target_spec)

    target.eval().requires_grad_(False)
    draft_spec = TrainSpec(args.draft_steps, args.draft_lr, args.warmup, args.eval_every)
    draft_batches = random_batches(train_tokens, args.seq_len, args.draft_batch, bos_id, args.seed + 1)
    loss_fn = distill_loss(draft, target, args.distill_temperature, args.distill_ce_weight)
    draft_train, draft_val = fit("draft", draft, loss_fn, draft_batches, val, draft_spec)

    save_model(target, tokenizer, args.out / "target")
    save_model(draft, tokenizer, args.out / "draft")
    print(f"final target: train CE {target_train:.4f}, val CE {target_val:.4f}")
    print(f"final draft: train distill loss {draft_train:.4f}, val CE {draft_val:.4f}")
    print(f"total wall time {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
