"""POST /tokenize and /detokenize, with the same tokenizer and chat template as generation."""

from __future__ import annotations

import asyncio

from aiohttp import web

from helix.frontend.errors import bad_request, from_value_error
from helix.frontend.generation import tokenize_chat
from helix.frontend.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from helix.frontend.routing import Endpoint, json_response, read_body
from helix.frontend.state import state_of


async def tokenize(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_body(request, TokenizeRequest)
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("prompt: give exactly one of `prompt` and `messages`", "prompt")
    if state.tokenizer is None:
        raise bad_request("prompt: this model has no tokenizer", "prompt")
    loop = asyncio.get_running_loop()
    try:
        if body.messages is not None:
            tokens = await tokenize_chat(state, body.messages, body.add_generation_prompt)
        else:
            tokens = await loop.run_in_executor(
                None, lambda: list(state.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)))
    except ValueError as error:
        raise from_value_error(error) from None
    return json_response(TokenizeResponse(tokens, len(tokens), state.max_model_len))


async def detokenize(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_body(request, DetokenizeRequest)
    state.check_model(body.model)
    if state.tokenizer is None:
        raise bad_request("tokens: this model has no tokenizer", "tokens")
    state.check_token_ids(body.tokens, "tokens")
    text = await asyncio.get_running_loop().run_in_executor(None, state.tokenizer.decode, body.tokens)
    return json_response(DetokenizeResponse(text))


ENDPOINTS = [
    Endpoint("POST", "/tokenize", tokenize, "Token ids of a prompt or of chat messages (after the chat template).",
             TokenizeRequest, TokenizeResponse),
    Endpoint("POST", "/detokenize", detokenize, "Text of token ids.", DetokenizeRequest, DetokenizeResponse),
]
