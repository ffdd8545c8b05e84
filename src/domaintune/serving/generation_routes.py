"""The text-generation routes, /v1/chat/completions and /v1/completions: prompts, token limits, and handing work to the generator."""
from __future__ import annotations

import json

from fastapi import Depends, FastAPI, Request

from domaintune.serving.auth import ApiKey
from domaintune.serving.engine import GenerationRequest, Generator
from domaintune.serving.errors import ApiError
from domaintune.serving.generation_replies import collect, completion_body, completion_choice, respond
from domaintune.serving.schemas import ChatRequest, CompletionRequest, Sampling
from domaintune.serving.state import State


def add_generation_routes(app: FastAPI, state: State) -> None:
    def generator_for(name: str, key: ApiKey, request: Request) -> Generator:
        generator = state.generator
        state.pick({model: generator for model in generator.models} if generator else {}, name, key, "text generation")
        request.state.record.model = name
        return generator

    def max_tokens_for(requested: int | None, prompt_tokens: int, generator: Generator, param: str) -> int:
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

    def submit(generator: Generator, body: Sampling, prompt_ids: list[int], max_tokens: int) -> GenerationRequest:
        request = GenerationRequest(model=body.model, prompt_ids=prompt_ids, max_tokens=max_tokens,
                                    temperature=body.temperature, top_p=body.top_p, stop=body.stops())
        generator.submit(request)
        return request

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, key: ApiKey = Depends(state.authorized)):
        generator = generator_for(body.model, key, request)
        tokenizer = generator.tokenizer
        if not tokenizer.chat_template:
            raise ApiError(400, f"messages: the model '{body.model}' has no chat template; use /v1/completions.",
                           param="messages")
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # templates raise on conversations they don't support (roles, order)
            raise ApiError(400, f"messages: the model's chat template refused them: {str(error).splitlines()[0]}",
                           param="messages") from None
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = max_tokens_for(body.max_completion_tokens or body.max_tokens, len(prompt_ids), generator, "messages")
        work = submit(generator, body, prompt_ids, max_tokens)
        record = request.state.record
        record.prompt_tokens = len(prompt_ids)
        record.content["prompt"] = json.dumps(messages)
        return await respond(state, body, record, work, "chat.completion")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(state.authorized)):
        generator = generator_for(body.model, key, request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or (body.stream and len(prompts) > 1):
            raise ApiError(400, "prompt: give one prompt (streaming) or a non-empty list of prompts.", param="prompt")
        encoded = [generator.tokenizer(prompt)["input_ids"] for prompt in prompts]
        if not all(encoded):
            raise ApiError(400, "prompt: a prompt is empty.", param="prompt")
        # Every prompt is checked before any is generated.
        limits = [max_tokens_for(body.max_tokens, len(ids), generator, "prompt") for ids in encoded]
        work = [submit(generator, body, ids, limit) for ids, limit in zip(encoded, limits)]
        record = request.state.record
        record.prompt_tokens = sum(len(ids) for ids in encoded)
        record.content["prompt"] = json.dumps(prompts)
        if body.stream:
            return await respond(state, body, record, work[0], "text_completion")
        results = [await collect(state, item) for item in work]
        record.completion_tokens = sum(tokens for _, _, tokens in results)
        record.content["completion"] = json.dumps([text for text, _, _ in results])
        choices = [completion_choice(False, index, text, reason) for index, (text, reason, _) in enumerate(results)]
        return completion_body(body.model, "text_completion", choices, record)
