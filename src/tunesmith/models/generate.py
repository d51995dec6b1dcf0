"""Chat replies for chat, quickstart and the data tools: a thin layer over TransformersEngine."""

from __future__ import annotations

from tunesmith.data.render import prompt_ids
from tunesmith.models.engine import GenerationParams, TransformersEngine
from tunesmith.models.vlm import is_processor
from tunesmith.models.vlm_engine import VlmEngine
from tunesmith.utils.llm import Reply


def generate_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    batch_size: int = 8,
    streamer=None,
) -> list[Reply]:
    """One reply per conversation (each ends with a user turn). Greedy when temperature == 0.

    A `streamer` (transformers TextStreamer) needs a single conversation per call."""
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)
    if is_processor(tokenizer):  # a vision-language model: image parts go through its processor
        completions = VlmEngine(model, tokenizer, batch_size).generate(conversations, params)
        return [Reply(c.text.strip(), c.finish_reason == "stop") for c in completions]
    engine = TransformersEngine(model, tokenizer, batch_size)
    ids = [prompt_ids(tokenizer, conv) for conv in conversations]
    completions = engine.generate_ids(ids, params, streamer=streamer)
    return [Reply(c.text.strip(), c.finish_reason == "stop") for c in completions]
