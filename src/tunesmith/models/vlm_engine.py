"""Generation with a vision-language model behind the Engine interface (serving, chat, eval).

A conversation's messages may hold image parts (`{"type": "image", "image": PIL image, path
or data: URL}`) beside text; the processor renders the conversation with the model's chat
template (render_chat, as in training) and expands each image into its tokens. Conversations
are generated one at a time (each has its own images and pixel values); decoding, stop
strings, cancellation and streaming are TransformersEngine's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from transformers import StoppingCriteriaList

from tunesmith.data.render import encode_with_images
from tunesmith.models.engine import (
    Completion,
    GenerationParams,
    TransformersEngine,
    _Cancelled,
    _RowsDone,
    _sampling,
    _StreamRow,
)
from tunesmith.models.vlm import is_processor
from tunesmith.utils.images import load_image


def engine_for(model, tokenizer, batch_size: int = 16) -> TransformersEngine:
    """VlmEngine for a model loaded with its processor, TransformersEngine otherwise."""
    if is_processor(tokenizer):
        return VlmEngine(model, tokenizer, batch_size)
    return TransformersEngine(model, tokenizer, batch_size)


def split_images(conversation: list[dict]) -> tuple[list[dict], list]:
    """(messages in the processor's shape: content as parts, images as bare image parts; the
    images in order)."""
    messages, images = [], []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = []
            for part in content:
                if part.get("type") == "image":
                    if part.get("image") is not None:
                        images.append(load_image(part["image"]))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
        messages.append({"role": message["role"], "content": parts})
    return messages, images


class VlmEngine(TransformersEngine):
    reads_images = True

    def __init__(self, model, processor, batch_size: int = 16):
        super().__init__(model, processor.tokenizer, batch_size)
        self.processor = processor

    def inputs(self, conversation: list[dict]) -> dict:
        """The model's inputs for a prompt awaiting its reply (ids, pixel values, ...)."""
        messages, images = split_images(conversation)
        return encode_with_images(self.processor, messages, images, add_generation_prompt=True)

    def prompt_length(self, conversation: list[dict]) -> int:
        return self.inputs(conversation)["input_ids"].shape[1]

    @torch.inference_mode()
    def generate(
        self,
        conversations: list[list[dict]],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        results = []
        for i, conversation in enumerate(conversations):
            event = cancelled[i] if cancelled else None
            if event is not None and event.is_set():
                results.append(Completion("", "stop", 0, 0))
                continue
            inputs = self._on_device(self.inputs(conversation))
            output = self.model.generate(
                **inputs,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
                stop_strings=params.stop or None,
                tokenizer=self.tokenizer if params.stop else None,
                stopping_criteria=StoppingCriteriaList([_Cancelled([event])] if event else []),
                **_sampling(params),
            )
            width = inputs["input_ids"].shape[1]
            results.append(self._finish(output[0, width:].tolist(), width, params.stop))
        return results

    @torch.inference_mode()
    def stream_batch(
        self,
        conversations: list[list[dict]],
        params: list[GenerationParams],
        emit: Callable[[int, str | None], None],
        cancelled: list[threading.Event] | None = None,
    ) -> None:
        """Each conversation streamed in turn (its own images); the sampling settings are the
        first row's, as in TransformersEngine.stream_batch."""
        if params[0].seed is not None:
            torch.manual_seed(params[0].seed)
        cancelled = cancelled or [threading.Event() for _ in conversations]
        for i, conversation in enumerate(conversations):
            row = _StreamRow(self, i, params[i], cancelled[i], emit)
            if not row.cancelled.is_set():
                inputs = self._on_device(self.inputs(conversation))
                self.model.generate(
                    **inputs,
                    max_new_tokens=row.params.max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_ids,
                    stopping_criteria=StoppingCriteriaList([_RowsDone([row])]),
                    **_sampling(params[0]),
                )
            row.end()

    def _on_device(self, inputs: dict) -> dict:
        device = self.model.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
