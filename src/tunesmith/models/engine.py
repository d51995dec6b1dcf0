"""Text generation behind one engine interface: batched transformers here, vLLM on a GPU.

Chat prompts are rendered by `data.render.prompt_ids`, the function training uses, so a model
is always prompted the way it was trained. `TransformersEngine` sorts prompts by length, runs
them in left-padded batches with the KV cache, and puts the outputs back in input order; its
greedy outputs equal one-by-one `model.generate`. `stream_batch` streams several replies from
one batch (a stopping criterion hands each step's tokens to per-row decoders), and a prompt
whose `cancelled` event is set stops at its next token in either path. Loading the model and
switching PEFT adapters are the caller's business (runs/inference.create_engine loads runs).
"""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunesmith.data.render import prompt_ids
from tunesmith.models.stop_cache import bound_stop_string_cache
from tunesmith.utils.errors import ConfigError, ModelError

ENGINE_KINDS = ("transformers", "vllm")
bound_stop_string_cache()  # stop strings' vocab x length tables: at most 256 MB kept


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
        self,
        conversations: list[list[dict]],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        """One reply per conversation (chat template applied), in input order; a conversation
        whose `cancelled` event is set stops early (its reply is then of no use)."""
        ...

    def complete(
        self,
        prompts: list[str],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        """Raw text continuation, no chat template."""
        ...

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        """Text deltas of one reply as they are generated."""
        ...

    def stream_batch(
        self,
        conversations: list[list[dict]],
        params: list[GenerationParams],
        emit: Callable[[int, str | None], None],
        cancelled: list[threading.Event] | None = None,
    ) -> None:
        """Several replies generated together: `emit(row, delta)` as text comes, then
        `emit(row, None)` once when the row ends."""
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
        self,
        conversations: list[list[dict]],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        ids = [prompt_ids(self.tokenizer, c) for c in conversations]
        return self.generate_ids(ids, params, cancelled=cancelled)

    def complete(
        self,
        prompts: list[str],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        # Special tokens as a plain tokenizer call adds them (a BOS for Llama-style tokenizers).
        ids = self.tokenizer(list(prompts))["input_ids"]
        return self.generate_ids(ids, params, cancelled=cancelled)

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        """Text deltas of one reply, from `stream_batch` run in a thread (one code path)."""
        deltas: queue.Queue = queue.Queue()
        cancel, errors = threading.Event(), []

        def work() -> None:
            try:
                self.stream_batch([conversation], [params], lambda _, d: deltas.put(d), [cancel])
            except BaseException as exc:  # re-raised in the consumer's thread below
                errors.append(exc)
                deltas.put(None)  # unblock the consumer

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (delta := deltas.get()) is not None:
                yield delta
        finally:
            cancel.set()  # a consumer that stops early (client gone) ends generation too
            thread.join()
        if errors:
            raise errors[0]

    def stream_batch(
        self,
        conversations: list[list[dict]],
        params: list[GenerationParams],
        emit: Callable[[int, str | None], None],
        cancelled: list[threading.Event] | None = None,
    ) -> None:
        """Generate replies to several conversations as one batch, streaming each.

        `emit(row, text)` gets each row's text deltas as they are decoded, and `emit(row, None)`
        once when the row ends (end token, stop string, its max_new_tokens, or its `cancelled`
        event set). Rows may differ in max_new_tokens and stop strings; the sampling settings
        (temperature, top_p, seed) are the first row's. The concatenated deltas of a row equal
        `generate`'s text for it."""
        prompts = [prompt_ids(self.tokenizer, c) for c in conversations]
        self.stream_ids(prompts, params, emit, cancelled)

    @torch.inference_mode()
    def stream_ids(
        self,
        prompts: list[list[int]],
        params: list[GenerationParams],
        emit: Callable[[int, str | None], None],
        cancelled: list[threading.Event] | None = None,
    ) -> None:
        """`stream_batch` on token-id prompts."""
        for i, ids in enumerate(prompts):
            if not ids:
                raise ConfigError(f"prompt {i} is empty: there is nothing to continue from")
        first = params[0]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        cancelled = cancelled or [threading.Event() for _ in prompts]
        size = self.rows_per_batch()
        for start in range(0, len(prompts), size):
            rows = [
                _StreamRow(self, start + k, params[start + k], cancelled[start + k], emit)
                for k in range(min(size, len(prompts) - start))
            ]
            live = [row for row in rows if not row.cancelled.is_set()]
            for row in rows:
                if row.cancelled.is_set():
                    row.end()
            if not live:
                continue
            input_ids, attention_mask = left_pad([prompts[r.index] for r in live], self.pad_id)
            device = self.model.device
            self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max(r.params.max_new_tokens for r in live),
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
                stopping_criteria=StoppingCriteriaList([_RowsDone(live)]),
                **_sampling(first),
            )
            for row in live:
                row.end()  # a no-op for rows that ended inside the loop

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        streamer=None,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        """Completions of token-id prompts, in input order; `streamer` needs a single prompt.

        A prompt whose `cancelled` event is set stops at its next token (its completion is cut
        short); a batch stops once all its prompts are finished or cancelled, and a batch whose
        prompts are all cancelled before it starts is skipped."""
        for i, ids in enumerate(prompts):
            if not ids:
                raise ConfigError(f"prompt {i} is empty: there is nothing to continue from")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Longest first: similar lengths share a batch (little padding), and a batch too big
        # for memory fails at once rather than at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[Completion | None] = [None] * len(prompts)
        size = self.rows_per_batch()
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            events = [cancelled[i] for i in rows] if cancelled else None
            if events and all(e.is_set() for e in events):
                for i in rows:
                    results[i] = Completion("", "stop", len(prompts[i]), 0)
                continue
            batch = self._generate_batch([prompts[i] for i in rows], params, streamer, events)
            for i, completion in zip(rows, batch, strict=True):
                results[i] = completion
        return results  # type: ignore[return-value]  # every slot is filled above

    def rows_per_batch(self) -> int:
        """The batch size; 1 for PEFT prompt learning (prompt, prefix, p-tuning), which ignores
        position ids, so that left padding would change its replies."""
        config = getattr(self.model, "active_peft_config", None)
        return 1 if getattr(config, "is_prompt_learning", False) else self.batch_size

    def _generate_batch(self, batch, params, streamer, events) -> list[Completion]:
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
            stopping_criteria=StoppingCriteriaList([_Cancelled(events)] if events else []),
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
        return whole_chars(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), tokens)

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

    # vLLM's offline LLM can neither stop one prompt early nor stream tokens: `cancelled` is
    # not looked at once generation runs, and a streamed reply comes in one piece.
    def generate(
        self,
        conversations: list[list[dict]],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, c)} for c in conversations]
        return self._run(prompts, params)

    def complete(
        self,
        prompts: list[str],
        params: GenerationParams,
        cancelled: list[threading.Event] | None = None,
    ) -> list[Completion]:
        return self._run(list(prompts), params)

    def stream(self, conversation: list[dict], params: GenerationParams) -> Iterator[str]:
        yield self.generate([conversation], params)[0].text

    def stream_batch(self, conversations, params, emit, cancelled=None) -> None:
        for row, (conversation, row_params) in enumerate(zip(conversations, params, strict=True)):
            if not (cancelled and cancelled[row].is_set()):
                emit(row, self.generate([conversation], row_params)[0].text)
            emit(row, None)

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


def whole_chars(decode: Callable[[list[int]], str], tokens: list[int]) -> str:
    """The text of `tokens` up to its last complete character. A byte-level tokenizer spells a
    character (a Chinese one: 3 bytes in UTF-8) in up to 4 tokens; cut between them (at
    max_new_tokens, or mid-stream) the text would end in U+FFFD. Those last tokens are left out
    (up to 4; a U+FFFD that leaving out 4 tokens does not clear is kept). The text alone cannot
    tell a cut character from a U+FFFD the model wrote as its very last one: that one goes too."""
    text = decode(tokens)
    if not text.endswith("\ufffd"):
        return text
    for drop in range(1, min(4, len(tokens)) + 1):
        shorter = decode(tokens[:-drop])
        if not shorter.endswith("\ufffd"):
            return shorter
    return text


def first_stop(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _sendable(text: str, stop: list[str]) -> tuple[str, bool]:
    """(the part of a reply so far that can be streamed, whether a stop string ended it): the
    text before the first stop string, else all but a tail that may begin one."""
    cut = first_stop(text, stop)
    if cut is not None:
        return text[:cut], True
    return text[: len(text) - _stop_prefix_len(text, stop)], False


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
    """A stopping criterion that ends each row once its event is set."""

    def __init__(self, events: list[threading.Event]):
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [event.is_set() for event in self.events]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _StreamRow:
    """One streamed reply: its tokens so far, the text sent, and why it ends."""

    def __init__(self, engine: TransformersEngine, index: int, params, cancelled, emit):
        self.engine, self.index, self.params = engine, index, params
        self.cancelled, self.emit = cancelled, emit
        self.tokens: list[int] = []
        self.sent = 0  # characters of text already emitted
        self.done = False

    def add(self, token: int) -> None:
        """Take the next generated token; emit what is safe to send; end the row if it is over."""
        if self.cancelled.is_set():
            self.end()
            return
        if token in self.engine.eos_ids:
            self.end()
            return
        self.tokens.append(token)
        # _decode leaves out a character whose bytes have not all come
        text, stopped = _sendable(self.engine._decode(self.tokens), self.params.stop)
        self._send(text)
        if stopped or len(self.tokens) >= self.params.max_new_tokens:
            self.end()

    def end(self) -> None:
        if self.done:
            return
        self.done = True
        if not self.cancelled.is_set():  # the held-back tail, if no stop string came
            text = self.engine._decode(self.tokens)
            cut = first_stop(text, self.params.stop)
            self._send(text if cut is None else text[:cut])
        self.emit(self.index, None)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.emit(self.index, text[self.sent :])
            self.sent = len(text)


class _RowsDone(StoppingCriteria):
    """Feeds each step's tokens to the streamed rows; a row is finished once it has ended."""

    def __init__(self, rows: list[_StreamRow]):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.done:
                row.add(token)
        done = [row.done for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
