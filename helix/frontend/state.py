"""What every route needs: the engine, the server's configuration, metrics,
and the admission count. One ServerState per aiohttp app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from helix.engine import EngineStreams
from helix.frontend.chat_template import ChatTemplate
from helix.frontend.errors import APIError, bad_request, service_unavailable
from helix.frontend.logprobs import TokenText
from helix.frontend.metrics import ServerMetrics
from helix.structured_output import GrammarCompiler

DEFAULT_MAX_QUEUED_REQUESTS = 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Connections the kernel completes and queues before the loop accepts them. A
# burst beyond the queue has its SYNs dropped, and clients retry only after a
# second (TCP's initial retransmission timeout): aiohttp's default of 128 put a
# second into the first token of a third of 256 clients connecting at once.
DEFAULT_BACKLOG = 2048


@dataclass(frozen=True)
class ServerConfig:
    served_model_name: str
    api_key: str | None = None
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    chat_template_file: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after_s: int = 1
    # Browser origins (scheme://host[:port]) whose pages may call the API; "*" is any.
    # Empty: no CORS headers, so browsers keep other sites' pages from reading answers.
    allowed_origins: tuple[str, ...] = ()
    tool_call_parser: str | None = None  # reads the calls a model writes with tool_choice "auto"


class ServerState:
    def __init__(self, engine: EngineStreams, config: ServerConfig):
        self.engine = engine
        self.config = config
        self.tokenizer = engine.tokenizer
        self.token_text = TokenText(self.tokenizer)
        self.chat_template = ChatTemplate.resolve(self.tokenizer, config.chat_template_file)
        self.grammars = GrammarCompiler(self.tokenizer)  # checks response_format schemas before admission
        self.max_model_len: int = engine.limits.max_model_len
        self.vocab_size: int = engine.limits.vocab_size
        self.created = int(time.time())
        self.in_flight = 0  # generation requests admitted and not yet finished
        self.draining = False  # shutting down: admit nothing new, let in-flight requests finish
        self.metrics = ServerMetrics(engine.stats, lambda: self.in_flight)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.served_model_name:
            raise APIError(400, f"model: {model!r} is not served here; this server serves "
                                f"{self.config.served_model_name!r}", param="model", code="model_not_found")

    def check_running(self) -> None:
        if not self.engine.is_running:
            raise service_unavailable(f"the engine is not running: {self.engine.dead_error}")

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `max_queued_requests` places for a generation request, or refuse with 503."""
        self.check_running()
        if self.draining:
            raise service_unavailable("server is shutting down", retry_after_s=self.config.retry_after_s)
        if self.in_flight >= self.config.max_queued_requests:
            raise service_unavailable(f"server is busy: {self.in_flight} requests in flight (limit "
                                      f"{self.config.max_queued_requests}); retry later",
                                      retry_after_s=self.config.retry_after_s)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise bad_request(f"{param}: token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})",
                              param)


STATE = web.AppKey("helix_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
