"""The shipped helix-tiny pair: loads offline through transformers and Helix
with matching logits, and its draft agrees with its target often enough for
speculation to pay (a property of the shipped weights, measured here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helix import LLM, SamplingParams
from helix.block_manager.block_pool import BlockPool
from helix.engine_args import embedded_model_path
from helix.worker.models import build_model, model_source
from tests.paged_runner import PagedRunner

TARGET = Path(embedded_model_path("target"))
DRAFT = Path(embedded_model_path("draft"))
# Lines from the held-out last 10% of Tiny Shakespeare (never trained on).
HELD_OUT = [
    "ANTONIO:\nIt is the quality o' the climate.\n\nSEBASTIAN:\n",
    "Just as my master had direction:\nGrumio gave order how it should be done.\n\nGRUMIO:\n",
    "And that he does I weep: myself am Naples,\nWho with mine eyes, never since at ebb, beheld\n",
    "With one consent to have her so bestow'd;\nFor curious I cannot be with you,\n",
    "While she did call me rascal fiddler\nAnd twangling Jack; with twenty such vile terms,\n",
    "Let's ha't, good Grumio.\n\nGRUMIO:\nLend thine ear.\n\nCURTIS:\nHere.\n\n",
    "I'll slit the villain's nose, that would have sent\nme to the gaol.\n\nBAPTISTA:\n",
    "Forgot you! no, sir: I could not forget you, for I\nnever saw you before in all my life.\n\n",
]
ROLLOUT = 32


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TARGET)


@pytest.mark.parametrize("directory", [TARGET, DRAFT], ids=["target", "draft"])
def test_loads_through_transformers_and_helix_with_equal_logits(directory: Path, tokenizer) -> None:
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = build_model(model_source(str(directory), "auto"), "auto", torch.device("cpu"), torch.float32)
    ids = tokenizer.encode(HELD_OUT[0])
    logits = PagedRunner(model, BlockPool(64)).step({"s": ids})["s"]
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].float()
    assert (logits - expected).abs().max().item() < 1e-3
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


@torch.no_grad()
def test_greedy_acceptance_rate_is_at_least_one_half(tokenizer) -> None:
    # Per-token agreement of the draft's argmax with the target's along the
    # target's greedy continuation: the acceptance rate of greedy speculation.
    target = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(DRAFT, dtype=torch.float32).eval()
    agreed = total = 0
    for text in HELD_OUT:
        ids = tokenizer.encode(text)
        for _ in range(ROLLOUT):
            batch = torch.tensor([ids])
            target_next = int(target(batch).logits[0, -1].argmax())
            agreed += int(int(draft(batch).logits[0, -1].argmax()) == target_next)
            total += 1
            ids.append(target_next)
    assert agreed / total >= 0.5, f"greedy acceptance {agreed / total:.3f}"


def test_default_llm_serves_the_pair_with_speculation() -> None:
    llm = LLM(num_kv_blocks=256)
    output = llm.generate(HELD_OUT[:2], SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    assert all(o.outputs[0].text for o in output)
    stats = llm.stats()
    assert stats["spec_draft_tokens"] > 0 and stats["acceptance_rate"] > 0.3
