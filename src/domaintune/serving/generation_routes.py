"""The text-generation routes, /v1/chat/completions and /v1/completions: prompts, token limits, and handing work to the generator."""
from __future__ import annotations

import json

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from domaintune.serving.auth import ApiKey
from domaintune.serving.batching import BatchingWorker, GenerationRequest
from domaintune.serving.errors import ApiError, overloaded
from domaintune.serving.generation_replies import collect_all, completion_body, completion_choice, respond
from domaintune.serving.schemas import ChatRequest, CompletionRequest, Sampling
from domaintune.serving.state import State


def add_generation_routes(app: FastAPI, state: State) -> None:
    def generator_for(name: str, key: ApiKey, request: Request) -> BatchingWorker:
        generator = state.generator
        state.pick({model: generator for model in generator.models} if generator else {}, name, key, "text generation")
        request.state.record.model = name
        return generator

    def max_tokens_for(requested: int | None, prompt_tokens: int, generator: BatchingWorker, param: str) -> int:
        cap = state.settings.max_tokens
        if requested is not None and requested > cap:
            raise ApiError(400, f"max_tokens: {requested} is above this server's limit of {cap}.",
                           param="max_tokens", code="invalid_value")
        context = min(generator.context_length, state.settings.max_context or generator.context_length)
        max_tokens = requested if requested is not None else max(1, min(cap, context - prompt_tokens))
        if prompt_tokens + max_tokens > context:
            raise ApiError(400, f"{param}: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the "
                                f"context limit of {context} tokens.", param=param, code="context_length_exceeded")
        return max_tokens

    def submit(generator: BatchingWorker, body: Sampling, key: ApiKey, record, encoded: list[list[int]],
               limits: list[int]) -> list[GenerationRequest]:
        """Queue the prompts, after the queue bound and the key's token budget (prompt + max_tokens reserved
        now, settled to the real count when the request ends)."""
        if generator.queued + len(encoded) > state.settings.max_pending:
            raise overloaded(f"{state.settings.max_pending} generation requests waiting")
        prompt_tokens = sum(len(ids) for ids in encoded)
        record.reservation = state.keys.reserve(key, prompt_tokens + sum(limits))
        record.prompt_tokens = prompt_tokens  # once admitted: a refused request is charged nothing
        work = [GenerationRequest(model=body.model, prompt_ids=ids, max_tokens=limit, temperature=body.temperature,
                                  top_p=body.top_p, stop=body.stops()) for ids, limit in zip(encoded, limits)]
        generator.submit(work)
        return work

    async def note_prompt(record, redacted) -> None:
        """The prompt in the audit line with --log-content; PII redacted (--redact-pii) off the event loop."""
        if state.settings.log_content:
            record.content["prompt"] = json.dumps(await run_in_threadpool(redacted))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, key: ApiKey = Depends(state.authorized)):
        generator = generator_for(body.model, key, request)
        tokenizer = generator.tokenizer
        if not tokenizer.chat_template:
            raise ApiError(400, f"messages: the model '{body.model}' has no chat template; use /v1/completions.",
                           param="messages")
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]

        def encode() -> list[int]:
            try:
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as error:  # templates raise on conversations they don't support (roles, order)
                raise ApiError(400, f"messages: the model's chat template refused them: {str(error).splitlines()[0]}",
                               param="messages") from None
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]

        prompt_ids = await run_in_threadpool(encode)  # a long conversation must not stall every other request
        max_tokens = max_tokens_for(body.max_completion_tokens or body.max_tokens, len(prompt_ids), generator, "messages")
        record = request.state.record
        work = submit(generator, body, key, record, [prompt_ids], [max_tokens])
        await note_prompt(record, lambda: [{**message, "content": state.redact(message["content"])} for message in messages])
        return await respond(state, request, body, record, work[0], "chat.completion")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(state.authenticated)):
        generator = generator_for(body.model, key, request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or (body.stream and len(prompts) > 1):
            raise ApiError(400, "prompt: give one prompt (streaming) or a non-empty list of prompts.", param="prompt")
        cap = state.settings.max_prompts
        if len(prompts) > cap:
            raise ApiError(400, f"prompt: at most {cap} prompts per request, got {len(prompts)}.", param="prompt",
                           code="too_many_prompts")
        state.keys.admit(key, requests=len(prompts))  # each prompt is a request to the rate limit
        encoded = (await run_in_threadpool(generator.tokenizer, prompts))["input_ids"]
        if not all(encoded):
            raise ApiError(400, "prompt: a prompt is empty.", param="prompt")
        # Every prompt is checked before any is generated.
        limits = [max_tokens_for(body.max_tokens, len(ids), generator, "prompt") for ids in encoded]
        record = request.state.record
        work = submit(generator, body, key, record, encoded, limits)
        await note_prompt(record, lambda: [state.redact(prompt) for prompt in prompts])
        if body.stream:
            return await respond(state, request, body, record, work[0], "text_completion")
        results = await collect_all(state, request, record, work)
        record.content["completion"] = json.dumps([text for text, _ in results])
        choices = [completion_choice(False, index, text, reason) for index, (text, reason) in enumerate(results)]
        return completion_body(body.model, "text_completion", choices, record)
