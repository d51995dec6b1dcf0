"""Evaluation prompts cut to the model's context, generated in length-sorted chunks with progress.

A prompt longer than the model's context minus max_new_tokens keeps its END: the earliest
exchanges go first (a leading system message stays, the SFT policy of data/dataset.py); when the
latest turn alone is still too long, the start of its text goes too (and, only when the system
message alone leaves no room, the system message). Cut prompts are counted by the caller.

Generation runs in chunks of the engine's batch size, longest prompts first, so each chunk is one
length-homogeneous batch and a progress bar (stderr) moves as chunks finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunesmith.data.dataset import without_earliest_turns
from tunesmith.data.render import ToolChat, prompt_ids
from tunesmith.utils.errors import ConfigError

_SANE_MAX = 10_000_000  # tokenizers without a limit say 1e30 (transformers' VERY_LARGE_INTEGER)
_CHUNK_WITHOUT_BATCH = 64  # engines without a batch size (vLLM): a progress step, no batching

stderr_console = Console(stderr=True, highlight=False)


def model_context(engine) -> int | None:
    """The engine's context length in tokens: model.config.max_position_embeddings (vLLM: its
    max_model_len), or the tokenizer's model_max_length when smaller and sane; None if unknown."""
    sizes = []
    config = getattr(getattr(engine, "model", None), "config", None)
    config = getattr(config, "text_config", None) or config  # a vision-language model's
    sizes.append(getattr(config, "max_position_embeddings", None))
    with suppress(AttributeError):  # vLLM's offline engine
        sizes.append(engine.llm.llm_engine.model_config.max_model_len)
    sizes.append(getattr(getattr(engine, "tokenizer", None), "model_max_length", None))
    sane = [n for n in sizes if isinstance(n, int) and 0 < n < _SANE_MAX]
    return min(sane) if sane else None


def prompt_budget(engine, max_new_tokens: int) -> int | None:
    """Tokens a prompt may take: the context minus max_new_tokens (None: no known context)."""
    context = model_context(engine)
    if context is None:
        return None
    budget = context - max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"eval.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"{context}-token context; lower it"
        )
    return budget


@dataclass
class Fitted:
    messages: list[dict]
    tokens: int  # prompt tokens after the cut
    cut: bool


def fit_prompt(tokenizer, messages: list[dict], budget: int | None) -> Fitted:
    """The conversation's end that fits `budget` prompt tokens (see the module docstring)."""
    n = len(prompt_ids(tokenizer, messages))
    if budget is None or n <= budget:
        return Fitted(messages, n, False)
    if isinstance(messages, ToolChat):  # the cut keeps the tools: they take their share
        offered = n - len(prompt_ids(tokenizer, list(messages)))
        if offered >= budget:
            raise ConfigError(
                f"the tools a test item offers take {offered} prompt tokens, and the context "
                f"leaves {budget} with eval.max_new_tokens; offer fewer tools or a longer context"
            )
        cut = fit_prompt(tokenizer, list(messages), budget - offered)
        return Fitted(messages.like(cut.messages), cut.tokens + offered, True)
    latest = messages
    for shorter in without_earliest_turns(messages, answered=False):
        n = len(prompt_ids(tokenizer, shorter))
        if n <= budget:
            return Fitted(shorter, n, True)
        latest = shorter
    return _keep_text_end(tokenizer, latest, budget)


def _keep_text_end(tokenizer, messages: list[dict], budget: int) -> Fitted:
    """The latest turn's text cut from the front until the prompt fits."""
    *before, last = messages
    overhead = len(prompt_ids(tokenizer, [*before, {**last, "content": ""}]))
    if overhead > budget:  # the system message alone leaves no room: it goes too
        before = []
        overhead = len(prompt_ids(tokenizer, [{**last, "content": ""}]))
        if overhead > budget:
            raise ConfigError(
                f"eval.max_new_tokens leaves {budget} prompt tokens, fewer than the chat "
                f"template's own {overhead}; lower eval.max_new_tokens"
            )
    tokens = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    keep = budget - overhead
    while True:
        text = tokenizer.decode(tokens[-keep:]) if keep > 0 else ""
        text = text.lstrip("\ufffd")  # a character split by the cut
        cut = [*before, {**last, "content": text}]
        n = len(prompt_ids(tokenizer, cut))
        if n <= budget or keep <= 0:
            return Fitted(cut, n, True)
        keep -= max(1, n - budget)  # re-encoding at the new edge may merge differently


@contextmanager
def progress(label: str, total: int) -> Iterator:
    """A progress bar on stderr; yields advance(n)."""
    bar = Progress(
        TextColumn(f"{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=False,
    )
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda n=1: bar.advance(task, n)


def tracked(label: str, values: Iterable, total: int) -> Iterator:
    """`values`, advancing a progress bar per value."""
    with progress(label, total) as advance:
        for value in values:
            yield value
            advance()


def generate_fitted(engine, conversations: list[list[dict]], params, label: str):
    """(completions in input order, prompts cut): every prompt cut to the context, generated
    in length-sorted chunks of the engine's batch size with a progress bar."""
    budget = prompt_budget(engine, params.max_new_tokens)
    if hasattr(engine, "prompt_length"):  # a vision-language model: an image is never cut
        fitted = [Fitted(c, engine.prompt_length(c), False) for c in conversations]
    else:
        fitted = [fit_prompt(engine.tokenizer, c, budget) for c in conversations]
    order = sorted(range(len(fitted)), key=lambda i: fitted[i].tokens, reverse=True)
    size = getattr(engine, "batch_size", None) or _CHUNK_WITHOUT_BATCH
    results: list = [None] * len(fitted)
    with progress(label, len(fitted)) as advance:
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            replies = engine.generate([fitted[i].messages for i in chunk], params)
            for i, reply in zip(chunk, replies, strict=True):
                results[i] = reply
            advance(len(chunk))
    return results, sum(f.cut for f in fitted)
