"""Turns per-request token updates into RequestOutputs.

Owns detokenization and stop strings: a stop string found in the text ends
the request through the scheduler, like a stop token does. A request with
n > 1 runs as n child requests; their outputs are gathered under the parent id.
A streamed request's outputs are CUMULATIVE snapshots or, with
`output_kind=DELTA`, fresh outputs holding only what each step added, so no
step copies what earlier steps generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from helix.detokenizer import IncrementalDetokenizer
from helix.outputs import CompletionOutput, RequestOutput
from helix.sampling_params import RequestOutputKind
from helix.scheduler.outputs import RequestUpdate
from helix.scheduler.request import FinishReason, Request, TokenLogprobs


def child_request_id(parent_id: str, index: int, n: int) -> str:
    return parent_id if n == 1 else f"{parent_id}#{index}"


@dataclass
class _ParentState:
    output: RequestOutput  # built up in place; streams get it through hand_over
    detokenizers: dict[str, IncrementalDetokenizer]
    child_index: dict[str, int]
    children: list[Request] = field(default_factory=list)
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)  # by child id

    def start_output(self) -> None:
        """Begin the next output. A DELTA output is handed over as it is, so a new
        one replaces it; a CUMULATIVE one goes out as a snapshot and keeps growing."""
        if self.output.kind is RequestOutputKind.DELTA:
            self.output = self.output.next_delta()
        else:
            _clear_deltas(self.output)

    def hand_over(self) -> RequestOutput:
        """The output for a stream; later steps do not change it."""
        return self.output if self.output.kind is RequestOutputKind.DELTA else self.output.snapshot()


class OutputProcessor:
    def __init__(self, tokenizer: Any, finish: Callable[[str, FinishReason], None], stream_outputs: bool = True):
        self.tokenizer = tokenizer
        self._finish = finish
        # False: only finished outputs are returned (offline generate), which saves
        # copying every live request's output every step.
        self.stream_outputs = stream_outputs
        self._parents: dict[str, _ParentState] = {}
        self._parent_of: dict[str, str] = {}

    def add(self, parent_id: str, prompt: str | None, children: list[Request]) -> None:
        first = children[0]
        kind = first.params.output_kind if self.stream_outputs else RequestOutputKind.CUMULATIVE
        state = _ParentState(
            output=RequestOutput(parent_id, prompt, first.prompt_token_ids,
                                 [CompletionOutput(i) for i in range(len(children))], kind=kind),
            detokenizers={c.request_id: IncrementalDetokenizer(self.tokenizer, c.prompt_token_ids, c.params)
                          for c in children},
            child_index={c.request_id: i for i, c in enumerate(children)},
            children=children,
        )
        self._parents[parent_id] = state
        for child in children:
            self._parent_of[child.request_id] = parent_id

    def child_ids(self, parent_id: str) -> list[str]:
        state = self._parents.get(parent_id)
        return [c.request_id for c in state.children] if state else []

    def process(self, updates: list[RequestUpdate]) -> list[RequestOutput]:
        touched: dict[str, _ParentState] = {}
        for update in updates:
            parent_id = self._parent_of.get(update.request.request_id)
            if parent_id is None:
                continue
            state = self._parents[parent_id]
            if parent_id not in touched:  # deltas hold what this step added
                state.start_output()
                touched[parent_id] = state
            self._apply(state, update)
        for parent_id, state in touched.items():
            if state.output.finished:
                self._forget(parent_id)
        if not self.stream_outputs:  # a finished output is forgotten here: no later step changes it
            return [state.output for state in touched.values() if state.output.finished]
        return [state.hand_over() for state in touched.values()]

    def parent_id(self, child_id: str) -> str | None:
        return self._parent_of.get(child_id)

    def abort(self, parent_id: str) -> RequestOutput | None:
        """Mark every unfinished completion aborted and forget the request."""
        return self._end(parent_id, FinishReason.ABORT, None)

    def fail(self, parent_id: str, error: str) -> RequestOutput | None:
        """Mark every unfinished completion failed with `error` and forget the request."""
        return self._end(parent_id, FinishReason.ERROR, error)

    def _end(self, parent_id: str, reason: FinishReason, error: str | None) -> RequestOutput | None:
        state = self._parents.get(parent_id)
        if state is None:
            return None
        state.start_output()
        for completion in state.output.outputs:
            if completion.finish_reason is None:
                completion.finish_reason = reason.value
        state.output.error = error
        self._forget(parent_id)
        return state.hand_over()

    def _apply(self, state: _ParentState, update: RequestUpdate) -> None:
        request = update.request
        completion = state.output.outputs[state.child_index[request.request_id]]
        detokenizer = state.detokenizers[request.request_id]
        tokens, text, finish_reason = self._detokenize(detokenizer, update)
        completion.delta_text += text
        cumulative = state.output.kind is RequestOutputKind.CUMULATIVE
        # Cumulative text includes what the detokenizer holds back for stop strings.
        completion.text = detokenizer.text if cumulative else completion.delta_text
        completion.token_ids.extend(tokens)
        completion.delta_token_ids.extend(tokens)
        completion.num_generated_tokens += len(tokens)
        completion.num_draft_tokens = request.num_draft_tokens
        completion.num_accepted_tokens = request.num_accepted_tokens
        if finish_reason is not None:
            completion.finish_reason = finish_reason.value
        _add_logprobs(state, completion, request)
        state.output.num_cached_tokens = state.children[0].num_cached_tokens

    def _detokenize(self, detokenizer: IncrementalDetokenizer,
                    update: RequestUpdate) -> tuple[list[int], str, FinishReason | None]:
        """The update's tokens, new text and finish reason, cut at a stop string (which
        finishes the request)."""
        request = update.request
        tokens = update.new_token_ids
        finish_reason = update.finish_reason
        # The stop token (EOS or stop_token_ids) is not part of the text; the token that
        # completes a structured output, also a STOP, is.
        stop_token_hidden = (finish_reason is FinishReason.STOP and not request.params.include_stop_str_in_output
                             and bool(tokens) and tokens[-1] in request.stop_token_set)
        delta = detokenizer.update(tokens[:-1] if stop_token_hidden else tokens, finished=finish_reason is not None)
        if delta.stopped:
            tokens = tokens[:delta.num_tokens]  # drafts accepted past the stop string are dropped
            if finish_reason is None:
                self._finish(request.request_id, FinishReason.STOP)
            finish_reason = FinishReason.STOP
        return tokens, delta.text, finish_reason

    def _forget(self, parent_id: str) -> None:
        state = self._parents.pop(parent_id)
        for child_id in state.child_index:
            self._parent_of.pop(child_id, None)


def _add_logprobs(state: _ParentState, completion: CompletionOutput, request: Request) -> None:
    """The logprobs of the completion's `token_ids`, and the prompt's as `request` computed them."""
    if request.params.logprobs is not None:
        first = completion.num_generated_tokens - len(completion.token_ids)  # 0 unless DELTA
        completion.logprobs = request.logprobs[first:completion.num_generated_tokens]
    if request.params.prompt_logprobs is not None:
        prompt_logprobs = state.prompt_logprobs.get(request.request_id)
        if prompt_logprobs is None:  # complete once the request samples, and unchanged after: copied once
            prompt_logprobs = state.prompt_logprobs[request.request_id] = list(request.prompt_logprobs)
        state.output.prompt_logprobs = prompt_logprobs


def _clear_deltas(output: RequestOutput) -> None:
    for completion in output.outputs:
        completion.delta_text, completion.delta_token_ids = "", []
