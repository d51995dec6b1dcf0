"""Text generation behind one engine interface: batched transformers here, vLLM on a GPU.

Chat prompts are rendered by `data.render.prompt_ids`, the function training uses, so a model
is always prompted the way it was trained. `TransformersEngine` sorts prompts by length, runs
them in left-padded batches with the KV cache, and puts the outputs back in input order; its
greedy outputs equal one-by-one `model.generate`. Loading the model and switching PEFT
adapters are the caller's business (runs/inference.create_engine loads runs).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunesmith.data.render import prompt_ids
from tunesmith.utils.errors import ConfigError, ModelError

ENGINE_KINDS = ("transformers", "vllm")


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # cut before the first match; finish "stop"
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # OpenAI's API accepts one string or a list
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]  # an empty stop string would cut every reply
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end token or stop string) | "length"
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Engine(Protocol):
    tokenizer: Any

    def generate(
        self, conversations: list[list[dict]], params: GenerationParams
    ) -> list[Completion]:
        """One reply per conversation (chat template applied), in input order."""
        ...

    def complete(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        """Raw text continuation, no chat template."""
        ...

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        """Text deltas of one reply as they are generated."""
        ...


class TransformersEngine:
    """Batched generation with a transformers model (a PEFT model works the same way)."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.eos_ids = _eos_ids(model, tokenizer)

    def generate(
        self, conversations: list[list[dict]], params: GenerationParams
    ) -> list[Completion]:
        return self.generate_ids([prompt_ids(self.tokenizer, c) for c in conversations], params)

    def complete(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        # Special tokens as a plain tokenizer call adds them (a BOS for Llama-style tokenizers).
        return self.generate_ids(self.tokenizer(list(prompts))["input_ids"], params)

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        ids = prompt_ids(self.tokenizer, conversation)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel, errors = threading.Event(), []

        def work() -> None:
            try:
                self.generate_ids([ids], params, streamer=streamer, cancel=cancel)
            except BaseException as exc:  # re-raised in the consumer's thread below
                errors.append(exc)
                streamer.end()  # unblock the consumer

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from _cut_at_stop(streamer, params.stop)
        finally:
            cancel.set()  # a consumer that stops early (client gone) ends generation too
            thread.join()
        if errors:
            raise errors[0]

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        streamer=None,
        cancel: threading.Event | None = None,
    ) -> list[Completion]:
        """Completions of token-id prompts, in input order; `streamer` needs a single prompt."""
        for i, ids in enumerate(prompts):
            if not ids:
                raise ConfigError(f"prompt {i} is empty: there is nothing to continue from")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Longest first: similar lengths share a batch (little padding), and a batch too big
        # for memory fails at once rather than at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self._generate_batch([prompts[i] for i in rows], params, streamer, cancel)
            for i, completion in zip(rows, batch, strict=True):
                results[i] = completion
        return results  # type: ignore[return-value]  # every slot is filled above

    def _generate_batch(self, batch, params, streamer, cancel) -> list[Completion]:
        input_ids, attention_mask = left_pad(batch, self.pad_id)
        device = self.model.device
        output = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            stop_strings=params.stop or None,
            tokenizer=self.tokenizer if params.stop else None,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)] if cancel else []),
            **_sampling(params),
        )
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        return [
            self._finish(row, len(ids), params.stop)
            for row, ids in zip(new_tokens, batch, strict=True)
        ]

    def _finish(self, row: list[int], prompt_len: int, stop: list[str]) -> Completion:
        end = next((k for k, token in enumerate(row) if token in self.eos_ids), None)
        tokens = row if end is None else row[:end]
        count, reason = (len(row), "length") if end is None else (end + 1, "stop")
        text = self._decode(tokens)
        cut = first_stop(text, stop)
        if cut is not None:
            # Rows stopped by a stop string are padded afterwards; count up to the match.
            text, reason, count = text[:cut], "stop", self._tokens_until_stop(tokens, stop)
        return Completion(text, reason, prompt_len, count)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_until_stop(self, tokens: list[int], stop: list[str]) -> int:
        """The fewest leading tokens whose text holds a stop string (binary search)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if first_stop(self._decode(tokens[:mid]), stop) is None:
                low = mid + 1
            else:
                high = mid
        return high


class VLLMEngine:
    """The same interface on vLLM (CUDA only); a LoRA adapter is served as a LoRA request."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        lora_path: str | Path | None = None,
        tokenizer_path: str | None = None,
        **llm_kwargs,
    ):
        require_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.tokenizer = tokenizer  # renders chat prompts with the training template
        if lora_path is not None:
            llm_kwargs = {"enable_lora": True, "max_lora_rank": _lora_rank(lora_path)} | llm_kwargs
        self.llm = LLM(model=model_path, tokenizer=tokenizer_path or model_path, **llm_kwargs)
        self.lora = LoRARequest("adapter", 1, str(lora_path)) if lora_path is not None else None

    def generate(
        self, conversations: list[list[dict]], params: GenerationParams
    ) -> list[Completion]:
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, c)} for c in conversations]
        return self._run(prompts, params)

    def complete(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        return self._run(list(prompts), params)

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        # vLLM's offline LLM has no token stream: the reply comes in one piece.
        yield self.generate([conversation], params)[0].text

    def _run(self, prompts: list, params: GenerationParams) -> list[Completion]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop or None,
            seed=params.seed,
        )
        outputs = self.llm.generate(prompts, sampling, lora_request=self.lora, use_tqdm=False)
        return [
            Completion(
                o.outputs[0].text,
                "length" if o.outputs[0].finish_reason == "length" else "stop",
                len(o.prompt_token_ids),
                len(o.outputs[0].token_ids),
            )
            for o in outputs  # vLLM returns outputs in prompt order
        ]


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ModelError(
            "the vllm engine needs the vllm package on a CUDA machine (pip install vllm); "
            "use engine 'transformers' here"
        )
    if not torch.cuda.is_available():
        raise ModelError("the vllm engine needs a CUDA GPU and none is visible; use 'transformers'")


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with each row's last token in the last column."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def first_stop(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _cut_at_stop(chunks: Iterable[str], stop: list[str]) -> Iterator[str]:
    """Pass text deltas through, holding back any tail that may begin a stop string."""
    text, sent = "", 0
    for chunk in chunks:
        text += chunk
        cut = first_stop(text, stop)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        safe = len(text) - _stop_prefix_len(text, stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]


def _stop_prefix_len(text: str, stop: list[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    return max(
        (k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
        default=0,
    )


def _sampling(params: GenerationParams) -> dict:
    if params.temperature == 0:
        return {"do_sample": False}
    # top_k=0 turns off transformers' default top-k of 50: the contract has top_p only.
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}


def _eos_ids(model, tokenizer) -> list[int]:
    """End tokens: the model's generation config and the tokenizer's own (a chat turn's end)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    return list(dict.fromkeys(ids))


def _lora_rank(lora_path: str | Path) -> int:
    # vLLM preallocates LoRA slots for max_lora_rank (default 16) and rejects larger adapters.
    rank = json.loads((Path(lora_path) / "adapter_config.json").read_text()).get("r", 16)
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)


class _Cancelled(StoppingCriteria):
    """A stopping criterion that ends generation once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)
