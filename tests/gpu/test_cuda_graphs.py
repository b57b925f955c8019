"""CUDA graphs for decode steps: the same greedy tokens as eager mode, with
every block back in the pool afterwards.

Skipped where CUDA is absent (CI); run on a GPU machine before calling GPU
work done.
"""

from __future__ import annotations

import gc
import random
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from helix import LLM, SamplingParams
from helix.worker.attention import SequenceSpan
from helix.worker.cuda_graphs import GraphRunner
from helix.worker.token_feed import PositionShift
from tests.engine.test_multi_step import count_multi_steps
from tests.regimes import _REGIME_OPTIONS, assert_drained, run_regime
from tests.tiny_models import ARCHITECTURES, VOCAB_SIZE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _record_batches(runner: GraphRunner) -> list[tuple[int, bool]]:
    """Wrap `runner.run` to log (batch size, replayed) of every pure-decode attempt."""
    calls: list[tuple[int, bool]] = []
    run = runner.run

    def recording_run(spans: Any, token_ids: Any, feeds: Any = (), shift: Any = None) -> Any:
        replayed = run(spans, token_ids, feeds, shift)
        if all(span.num_new == 1 for span in spans):
            calls.append((len(spans), replayed is not None))
        return replayed

    runner.run = recording_run  # type: ignore[method-assign]
    return calls


def _generate(model_dir: Path, prompts: list[list[int]], max_tokens: int,
              **options: Any) -> tuple[LLM, list[list[int]], list[tuple[int, bool]]]:
    llm = LLM(str(model_dir), device="cuda", block_size=4, max_num_batched_tokens=128, check_invariants=True,
              **options)
    graphs = llm.engine.runner.graphs
    calls = _record_batches(graphs) if graphs is not None else []
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert_drained(llm)
    return llm, [o.outputs[0].token_ids for o in outputs], calls


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("regime", ["ample", "swap"])
def test_graphs_match_eager(regime: str, dtype: str, tiny_model_dirs: dict[str, Path],
                            greedy_prompts: list[list[int]]) -> None:
    # ample: max_num_seqs 12 captures 1, 2, 4, 8, so batches of 9-12 run eagerly.
    options: dict[str, Any] = {**_REGIME_OPTIONS[regime], "dtype": dtype}
    if regime == "ample":
        options["max_num_seqs"] = 12
    graphs_llm, graph_tokens, calls = _generate(tiny_model_dirs["llama"], greedy_prompts, 20, **options)
    eager_llm, eager_tokens, _ = _generate(tiny_model_dirs["llama"], greedy_prompts, 20, enforce_eager=True,
                                           **options)
    assert eager_llm.engine.runner.graphs is None
    assert graph_tokens == eager_tokens
    runner = graphs_llm.engine.runner.graphs
    assert runner is not None
    replayed = {bucket for bucket, _, _ in runner.replays}
    assert len(replayed) >= 2, runner.replays
    assert all(ok for size, ok in calls if size <= runner.buckets[1][-1])
    if regime == "ample":
        assert runner.buckets[1] == (1, 2, 4, 8)
        assert any(size > 8 and not ok for size, ok in calls)
    else:
        stats = graphs_llm.stats()
        assert stats["swapped_out"] > 0 and stats["swapped_in"] == stats["swapped_out"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("regime", ["ample", "swap"])
def test_scheduling_ahead_matches_scheduling_after_results(regime: str, dtype: str,
                                                           tiny_model_dirs: dict[str, Path],
                                                           greedy_prompts: list[list[int]]) -> None:
    """Graph replays fed their in-flight tokens on the device give the tokens of
    steps scheduled after the results: greedy, and seeded sampling with stop tokens."""
    options: dict[str, Any] = {**_REGIME_OPTIONS[regime], "dtype": dtype}
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sampled = [SamplingParams(temperature=0.8, top_p=0.95, max_tokens=20, seed=i, stop_token_ids=[7, 11])
               for i in range(len(greedy_prompts))]
    results = {}
    for async_scheduling in (False, True):
        llm = LLM(str(tiny_model_dirs["llama"]), device="cuda", block_size=4, max_num_batched_tokens=128,
                  check_invariants=True, async_scheduling=async_scheduling, **options)
        fed: list[int] = []
        run = llm.engine.runner.graphs.run

        def recording_run(spans: Any, token_ids: Any, feeds: Any = (), shift: Any = None) -> Any:
            replayed = run(spans, token_ids, feeds, shift)
            if feeds and replayed is not None:
                fed.append(len(feeds))
            return replayed

        llm.engine.runner.graphs.run = recording_run
        outputs = [[(c.token_ids, c.finish_reason) for o in llm.generate(greedy_prompts, params, use_tqdm=False)
                    for c in o.outputs] for params in (greedy, sampled)]
        assert_drained(llm)
        assert bool(fed) == async_scheduling
        results[async_scheduling] = outputs
    assert results[True] == results[False]
    assert any(reason == "stop" for _, reason in results[True][1])


@pytest.mark.parametrize("regime", ["ample", "swap"])
def test_multi_steps_match_single_steps(regime: str, tiny_model_dirs: dict[str, Path],
                                        greedy_prompts: list[list[int]]) -> None:
    """A multi-step's replays, each staged while earlier ones run and fed the
    tokens the one before chose on the device, give the tokens of single steps:
    greedy, and seeded sampling with stop tokens (fp32, so that batches of other
    shapes choose the same tokens)."""
    options: dict[str, Any] = {**_REGIME_OPTIONS[regime], "dtype": "float32"}
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sampled = [SamplingParams(temperature=0.8, top_p=0.95, max_tokens=20, seed=i, stop_token_ids=[7, 11])
               for i in range(len(greedy_prompts))]
    results = {}
    for num_scheduler_steps in (1, 8):
        llm = LLM(str(tiny_model_dirs["llama"]), device="cuda", block_size=4, max_num_batched_tokens=128,
                  check_invariants=True, async_scheduling=True, num_scheduler_steps=num_scheduler_steps, **options)
        calls = _record_batches(llm.engine.runner.graphs)
        multi = count_multi_steps(llm)
        results[num_scheduler_steps] = [
            [(c.token_ids, c.finish_reason) for o in llm.generate(greedy_prompts, params, use_tqdm=False)
             for c in o.outputs] for params in (greedy, sampled)]
        assert_drained(llm)
        assert any(replayed for _, replayed in calls)
        assert (multi[0] > 0) == (num_scheduler_steps > 1)
    assert results[8] == results[1]
    assert any(reason == "stop" for _, reason in results[8][1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_contexts_use_split_kv_graphs(dtype: str, tiny_model_dirs: dict[str, Path]) -> None:
    """Contexts past 256 keys make the eager launcher split the key range; the
    graph of the same split factor must be the one replayed."""
    rng = random.Random(3)
    prompts = [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randrange(260, 420))] for _ in range(5)]
    options = dict(dtype=dtype, num_kv_blocks=1024, max_model_len=512)
    graphs_llm, graph_tokens, _ = _generate(tiny_model_dirs["llama"], prompts, 24, **options)
    _, eager_tokens, _ = _generate(tiny_model_dirs["llama"], prompts, 24, enforce_eager=True, **options)
    assert graph_tokens == eager_tokens
    runner = graphs_llm.engine.runner.graphs
    assert any(splits > 1 for _, _, splits in runner.replays), runner.replays


@pytest.mark.parametrize("arch", [name for name in ARCHITECTURES if name != "llama"])
def test_graphs_match_eager_for_each_architecture(arch: str, tiny_model_dirs: dict[str, Path],
                                                  greedy_prompts: list[list[int]]) -> None:
    prompts = greedy_prompts[:10]
    options = dict(dtype="float32", num_kv_blocks=1024)
    graphs_llm, graph_tokens, _ = _generate(tiny_model_dirs[arch], prompts, 16, **options)
    _, eager_tokens, _ = _generate(tiny_model_dirs[arch], prompts, 16, enforce_eager=True, **options)
    assert graph_tokens == eager_tokens
    assert graphs_llm.engine.runner.graphs.replays


@pytest.mark.parametrize("draft", ["target", "unrelated"])
def test_speculation_with_graphs_equals_greedy(draft: str, tiny_model_dirs: dict[str, Path],
                                               unrelated_draft_dir: Path, greedy_prompts: list[list[int]],
                                               greedy_expected: list[list[int]]) -> None:
    """Draft passes replay the draft's graphs and verify steps the target's
    (q = 1 + K, shorter spans padded); output stays transformers' greedy
    tokens, blocks drain (run_regime)."""
    target = tiny_model_dirs["llama"]
    draft_dir = target if draft == "target" else unrelated_draft_dir
    regime = "swap" if draft == "target" else "ample"
    llm = run_regime(regime, target, greedy_prompts, greedy_expected, device="cuda", dtype="float32",
                     draft_model=str(draft_dir), speculation_mode="fixed", num_speculative_tokens=4)
    proposer = llm.engine.runner.proposer
    assert proposer.graphs is not None and sum(proposer.graphs.replays.values()) > 0
    verify_replays = [key for key in llm.engine.runner.graphs.replays if key[1] > 1]
    assert verify_replays, llm.engine.runner.graphs.replays
    stats = llm.stats()
    if draft == "target":
        assert stats["acceptance_rate"] == 1.0
    else:
        assert stats["spec_draft_tokens"] > 0


@pytest.mark.parametrize("mode", ["adaptive", "fixed"])
def test_verify_graphs_match_eager_speculation(mode: str, tiny_model_dirs: dict[str, Path],
                                               unrelated_draft_dir: Path, greedy_prompts: list[list[int]]) -> None:
    """Speculative decoding with verify graphs (spans padded to q) and in eager
    mode give the same tokens (fp32): greedy always; seeded sampling with a
    fixed K. Adaptive K follows measured pass times, which differ between the
    two modes, and each K consumes the request's generator differently."""
    options: dict[str, Any] = dict(device="cuda", dtype="float32", block_size=4, num_kv_blocks=1024,
                                   draft_model=str(unrelated_draft_dir), speculation_mode=mode,
                                   num_speculative_tokens=4, max_num_seqs=8, check_invariants=True)
    prompts = greedy_prompts[:12]
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, ignore_eos=True, seed=7)]
    results = {}
    for eager in (False, True):
        llm = LLM(str(tiny_model_dirs["llama"]), enforce_eager=eager, **options)
        outputs = llm.generate(prompts * 2, [params[0]] * len(prompts) + [params[1]] * len(prompts),
                               use_tqdm=False)
        assert_drained(llm)
        results[eager] = [o.outputs[0].token_ids for o in outputs]
        if not eager:
            assert any(q > 1 for _, q, _ in llm.engine.runner.graphs.replays), llm.engine.runner.graphs.replays
    compared = len(prompts) if mode == "adaptive" else 2 * len(prompts)
    assert results[False][:compared] == results[True][:compared]


def _record_drafts(proposer: Any) -> list[dict[str, list[int]]]:
    """Wrap `proposer.propose` to keep each step's proposals; read after the run."""
    steps: list[Any] = []
    propose = proposer.propose

    def recording(*args: Any) -> Any:
        steps.append(propose(*args))
        return steps[-1]

    proposer.propose = recording
    return steps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_draft_loop_graph_proposes_the_per_pass_drafts(dtype: str, tiny_model_dirs: dict[str, Path],
                                                       unrelated_draft_dir: Path,
                                                       greedy_prompts: list[list[int]]) -> None:
    """Greedy passes B as one graph propose exactly the drafts that pass-by-pass
    launches propose (contexts stay under one split-KV block)."""
    options: dict[str, Any] = dict(device="cuda", dtype=dtype, block_size=4, num_kv_blocks=1024,
                                   draft_model=str(unrelated_draft_dir), speculation_mode="fixed",
                                   num_speculative_tokens=5, max_num_seqs=16, check_invariants=True)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    results = {}
    for use_loop in (True, False):
        llm = LLM(str(tiny_model_dirs["llama"]), **options)
        proposer = llm.engine.runner.proposer
        assert proposer.loop is not None
        if not use_loop:
            proposer.loop = None
        steps = _record_drafts(proposer)
        outputs = llm.generate(greedy_prompts[:16], params, use_tqdm=False)
        assert_drained(llm)
        drafts = [{request_id: list(p.token_ids) for request_id, p in step.by_request.items()} for step in steps]
        results[use_loop] = ([o.outputs[0].token_ids for o in outputs], drafts)
        if use_loop:
            assert proposer.loop.replays > 0
    assert results[True] == results[False]
    assert sum(len(tokens) for step in results[True][1] for tokens in step.values()) > 100


def test_draft_loop_graph_with_the_target_as_draft_accepts_everything(tiny_model_dirs: dict[str, Path],
                                                                      greedy_prompts: list[list[int]],
                                                                      greedy_expected: list[list[int]]) -> None:
    target = tiny_model_dirs["llama"]
    llm = run_regime("swap", target, greedy_prompts, greedy_expected, device="cuda", dtype="float32",
                     draft_model=str(target), speculation_mode="fixed", num_speculative_tokens=6)
    assert llm.engine.runner.proposer.loop.replays > 0
    assert llm.stats()["acceptance_rate"] == 1.0


def test_a_dropped_engine_with_graphs_is_collected(tiny_model_dirs: dict[str, Path]) -> None:
    """Engines on CUDA hold reference cycles (graphs and their pools): a process
    that builds engines one after another (benchmarks, offline users) gets the
    memory back only if the collector can still reach them."""
    directory = str(tiny_model_dirs["llama"])
    llm = LLM(directory, device="cuda", draft_model=directory, num_kv_blocks=64, block_size=4)
    assert llm.engine.runner.graphs is not None
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    model = weakref.ref(llm.engine.runner.model)
    del llm
    gc.collect()
    assert model() is None


def _count_calls(owner: Any, name: str) -> list[int]:
    """Wrap method `name` of `owner` so that [0] counts its calls."""
    counter, method = [0], getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return method(*args, **kwargs)

    setattr(owner, name, counting)
    return counter


def _count_shifted_replays(runner: Any) -> list[int]:
    """Wrap `runner.run` so that [0] counts replays of spans shifted on the device."""
    counter, run = [0], runner.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        replayed = run(*args, **kwargs)
        shift = kwargs.get("shift", args[3] if len(args) > 3 else None)
        counter[0] += shift is not None and replayed is not None
        return replayed

    runner.run = counting_run
    return counter


@pytest.mark.parametrize("whole_rounds", [True, False])
@pytest.mark.parametrize("regime,draft", [("ample", "target"), ("swap", "target"), ("ample", "unrelated")])
def test_chained_rounds_with_graphs_equal_greedy(regime: str, draft: str, whole_rounds: bool,
                                                 tiny_model_dirs: dict[str, Path], unrelated_draft_dir: Path,
                                                 greedy_prompts: list[list[int]],
                                                 greedy_expected: list[list[int]]) -> None:
    """Chained speculative rounds after the first replay one graph per round
    (`RoundGraphs`); without those, the target's verify graphs, the draft's
    two-token pass A and its draft loop, with positions shifted on the device.
    With the target as its own draft and a coin keeping half the drafts, rounds
    start at random offsets while every emitted token is still greedy; with an
    unrelated draft the verdicts are the model's. Output stays transformers'
    greedy tokens (fp32), blocks drain."""
    target = tiny_model_dirs["llama"]
    # At most 8 running requests: verify graphs cover batches of up to 16 (larger ones run eagerly).
    options: dict[str, Any] = dict(device="cuda", dtype="float32", draft_model=str(target), speculation_mode="fixed",
                                   num_speculative_tokens=3, num_scheduler_steps=4, max_num_seqs=8)
    if draft == "target":
        options["spec_synthetic_acceptance"] = 0.5
    else:
        options["draft_model"] = str(unrelated_draft_dir)
    llm = run_regime(regime, target, greedy_prompts, greedy_expected, **options)
    runner = llm.engine.runner
    round_graphs = runner.round_graphs
    assert round_graphs is not None and round_graphs.ks == (1, 2, 3) and round_graphs.replays > 0
    if not whole_rounds:
        runner.round_graphs = None
    whole_replays = round_graphs.replays
    verify, draft_pass = _count_shifted_replays(runner.graphs), _count_shifted_replays(runner.proposer.graphs)
    loop_replays = runner.proposer.loop.replays
    chained, first_rounds = _count_calls(runner, "_launch_rounds"), _count_calls(runner, "_first_round")
    params = SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]), ignore_eos=True)
    outputs = llm.generate(greedy_prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == greedy_expected
    assert_drained(llm)
    if whole_rounds:
        # After a chained step the draft lags by one token: the next step's round 0 is a graph too.
        assert round_graphs.replays > whole_replays and chained[0] > first_rounds[0]
    else:
        assert verify[0] > 0 and draft_pass[0] > 0 and runner.proposer.loop.replays > loop_replays


@pytest.mark.parametrize("max_tokens", [8, 11])
def test_requests_near_max_tokens_chain_graphed_rounds_of_a_capped_k(max_tokens: int,
                                                                      tiny_model_dirs: dict[str, Path],
                                                                      greedy_prompts: list[list[int]],
                                                                      greedy_expected: list[list[int]]) -> None:
    """Fixed K = 4: a request a few tokens from max_tokens verifies fewer drafts,
    and its chained steps still replay round graphs, never rounds launched pass
    by pass (whose kernels would compile variants mid-generation). A coin that
    rejects every draft makes each round emit one token, so the last chained
    steps have fewer tokens left than K + 1 and verify a capped K."""
    target = tiny_model_dirs["llama"]
    llm = LLM(str(target), device="cuda", dtype="float32", block_size=4, check_invariants=True,
              draft_model=str(target), speculation_mode="fixed", num_speculative_tokens=4, num_scheduler_steps=4,
              max_num_seqs=8, num_kv_blocks=256, spec_synthetic_acceptance=0.0)
    runner = llm.engine.runner
    pass_by_pass = _count_calls(runner, "_rounds_pass_by_pass")
    chained_ks: list[int] = []
    launch_rounds = runner._launch_rounds

    def recording(scheduled: Any) -> Any:
        chained_ks.append(scheduled[0].num_spec_tokens)
        return launch_rounds(scheduled)

    runner._launch_rounds = recording
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate(greedy_prompts[:3], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [tokens[:max_tokens] for tokens in greedy_expected[:3]]
    assert_drained(llm)
    assert 4 in chained_ks and min(chained_ks) < 4, chained_ks
    assert pass_by_pass[0] == 0 and runner.round_graphs.replays > 0


def test_adaptive_k_chains_whole_round_graphs_of_each_k(tiny_model_dirs: dict[str, Path],
                                                        greedy_prompts: list[list[int]],
                                                        greedy_expected: list[list[int]]) -> None:
    """Adaptive K captures a round graph per K up to K_max and per batch bucket;
    with the target as its own draft (every draft accepted) its rounds replay
    them, and the output is transformers' greedy tokens."""
    target = tiny_model_dirs["llama"]
    llm = run_regime("ample", target, greedy_prompts, greedy_expected, device="cuda", dtype="float32",
                     draft_model=str(target), speculation_mode="adaptive", num_speculative_tokens=3,
                     num_scheduler_steps=4, max_num_seqs=8)
    round_graphs = llm.engine.runner.round_graphs
    assert round_graphs is not None and round_graphs.ks == (1, 2, 3)
    assert {k for _, k, _ in round_graphs.graph_keys} == {1, 2, 3}
    assert round_graphs.replays > 0, llm.stats()


def test_a_shifted_replay_equals_a_replay_staged_where_the_spans_start(tiny_model_dirs: dict[str, Path]) -> None:
    """The device's shift of positions, sequence lengths and slots gives the
    hidden states and cache writes of spans staged at their real starts."""
    llm = LLM(str(tiny_model_dirs["llama"]), device="cuda", dtype="float32", block_size=4, num_kv_blocks=256,
              max_num_seqs=8, draft_model=str(tiny_model_dirs["llama"]), num_speculative_tokens=3)
    runner = llm.engine.runner
    graphs, cache = runner.graphs, runner.kv_cache

    torch.manual_seed(0)
    cache.normal_()
    tables = [tuple(range(i * 20, i * 20 + 20)) for i in range(5)]
    lowest, by = [7, 30, 12, 3, 41], [0, 5, 2, 9, 1]
    token_ids = torch.randint(1, VOCAB_SIZE, (5 * 4,)).tolist()
    before = cache.clone()
    shifted = graphs.run([SequenceSpan(t, p, 4) for t, p in zip(tables, lowest)], token_ids, (),
                         PositionShift(torch.tensor(by, device="cuda"), max(by)))
    assert shifted is not None
    shifted_hidden, shifted_cache = shifted[0].clone(), cache.clone()
    cache.copy_(before)
    staged = graphs.run([SequenceSpan(t, p + b, 4) for t, p, b in zip(tables, lowest, by)], token_ids)
    assert staged is not None
    assert torch.equal(shifted_hidden, staged[0])
    assert torch.equal(shifted_cache, cache)
    assert not torch.equal(cache, before)
