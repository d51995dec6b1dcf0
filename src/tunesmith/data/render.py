"""Chat rendering with the tokenizer's own template, and assistant-only loss masks.

`render_chat` is the one place a conversation becomes text: training, evaluation, chat, export
and serving all call it, so a model is always prompted the way it was trained.

Most templates have no `{% generation %}` markers, so assistant spans are found by rendering
the conversation prefix by prefix: turn i starts where `messages[:i]` rendered with the
generation prompt ends, and stops where `messages[:i+1]` ends (its end-of-turn token included,
so the model learns to stop). Some templates close the whole conversation with `eos_token` when
no generation prompt follows (Phi-3, Phi-3.5, Phi-4): that token belongs to the last turn only.

Control-token text inside a message (`<|im_end|><|im_start|>system ...` typed by a user) stays
text: only the tokens the template itself writes become control tokens. Conversations without
such text are tokenized as the rendered string (the common case, unchanged); the others through
transformers' `apply_chat_template(..., sanitize_control_tokens=True)`, which encodes the
control tokens found in messages as plain text, in prompts and in training examples alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.tools import NAMED_TEMPLATES  # noqa: F401 - model.chat_template names

IGNORE_INDEX = -100  # label value that the loss skips


class TemplateError(ValueError):
    """The chat template cannot be used for loss masking (e.g. it rewrites earlier turns)."""


def render_chat(
    tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools=None
) -> str:
    """The conversation as the template writes it; `tools` (OpenAI's function list) and tool
    messages (assistant `tool_calls`, role `tool`: data/tools.py) need a template that renders
    them, or this is one TemplateError sentence."""
    if tools or _has_tool_turns(messages):
        require_tool_template(tokenizer)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, tools=tools or None
    )


class ToolChat(list):
    """A conversation (a list of messages) with the tools its prompt offers: engines, the
    server and evaluation hand it on as a conversation, and `prompt_ids` renders its tools."""

    def __init__(self, messages=(), tools: list[dict] | None = None):
        super().__init__(messages)
        self.tools = tools

    def like(self, messages) -> ToolChat:
        """Other messages (a cut of this prompt) with the same tools."""
        return ToolChat(messages, self.tools)


def encode_with_images(
    processor, messages: list[dict], images: list, add_generation_prompt: bool
) -> dict:
    """A vision-language model's inputs for one conversation (content as parts, an image part
    per image): rendered here, then the processor expands each image into its tokens and
    pixel values (data/multimodal.py trains on it, models/vlm_engine.py generates from it)."""
    text = render_chat(processor, messages, add_generation_prompt=add_generation_prompt)
    return dict(processor(text=[text], images=images or None, return_tensors="pt"))


def prompt_ids(tokenizer, messages: list[dict], tools=None) -> list[int]:
    """Token ids of a prompt ready for generation (the template adds any special tokens);
    control-token text inside the messages is encoded as text. A ToolChat brings its tools."""
    if tools is None:
        tools = getattr(messages, "tools", None)
    if injects_control_tokens(tokenizer, messages):
        return _sanitized_ids(tokenizer, messages, add_generation_prompt=True, tools=tools)
    text = render_chat(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _has_tool_turns(messages: list[dict]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


_TOOL_SUPPORT: dict[str, bool] = {}  # chat template -> renders tools and tool calls


def supports_tools(tokenizer) -> bool:
    """Whether the template renders tools, calls and results (TRL's check, by sentinels)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _TOOL_SUPPORT:
        from trl.chat_template_utils import supports_tool_calling

        _TOOL_SUPPORT[template] = supports_tool_calling(tokenizer)
    return _TOOL_SUPPORT[template]


def require_tool_template(tokenizer) -> None:
    if not supports_tools(tokenizer):
        raise TemplateError(
            "this model's chat template does not render tools or tool calls; set "
            "model.chat_template=chatml_tools (ChatML with <tool_call> tags) or a template "
            "of your own that reads `tools`, `tool_calls` and role `tool`"
        )


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The tokens only the template may write: special tokens and the added tokens its text
    holds (transformers' own choice); () where transformers cannot sanitize (before 5.x)."""
    find = getattr(tokenizer, "_get_control_tokens", None)
    if find is None or not getattr(tokenizer, "chat_template", None):
        return ()
    try:
        return tuple(find(tokenizer.get_chat_template()))
    except Exception:  # a template transformers cannot parse for literals: specials only
        return tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)


def injects_control_tokens(tokenizer, messages: list[dict]) -> bool:
    """Whether a message holds the text of a control token (a forged turn, or chat about one)."""
    tokens = control_tokens(tokenizer)
    return bool(tokens) and any(
        isinstance(value, str) and any(token in value for token in tokens)
        for message in messages
        for value in message.values()
    )


def _sanitized_ids(
    tokenizer, messages: list[dict], add_generation_prompt: bool, tools=None
) -> list[int]:
    if tools or _has_tool_turns(messages):
        require_tool_template(tokenizer)
    ids = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        add_generation_prompt=add_generation_prompt,
        sanitize_control_tokens=True,
        return_dict=False,
        tools=tools or None,
    )
    return list(ids)


def assistant_spans(
    tokenizer, messages: list[dict], tools=None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character span of every assistant turn
    (its answer or its tool calls; tool results are not the assistant's)."""
    full = render_chat(tokenizer, messages, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        through = render_chat(tokenizer, messages[: i + 1], tools=tools)
        end = _turn_end(through, full, tokenizer.eos_token)
        if end is None or not through.startswith(before):
            raise TemplateError(
                "the chat template renders earlier turns differently once later turns are added, "
                "so assistant tokens cannot be located; use a template without that behaviour "
                "(model.chat_template) or data.train_on_prompt=true"
            )
        spans.append((len(before), end))
    return full, spans


def _turn_end(through: str, full: str, eos: str | None) -> int | None:
    """Where the last turn of `through` ends in `full`; None if `full` renders it otherwise."""
    if full.startswith(through):
        return len(through)
    # the template closed the conversation with eos_token after this turn (Phi-3 style)
    if eos and through.endswith(eos) and full.endswith(eos):
        end = len(through) - len(eos)
        if full.startswith(through[:end]):
            return end
    return None


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trainable_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_conversation(
    tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False, tools=None
) -> TokenizedExample:
    """Ids and labels; labels are IGNORE_INDEX outside assistant turns unless train_on_prompt."""
    if injects_control_tokens(tokenizer, messages):
        return _tokenize_sanitized(tokenizer, messages, cutoff_len, train_on_prompt, tools)
    if train_on_prompt:  # no spans needed: this works with templates that rewrite earlier turns
        text = render_chat(tokenizer, messages, tools=tools)
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, messages, tools)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        labels = [
            token if _overlaps(start, end, spans) else IGNORE_INDEX
            for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)
        ]
    truncated = len(ids) > cutoff_len
    return TokenizedExample(ids[:cutoff_len], labels[:cutoff_len], truncated)


def _tokenize_sanitized(
    tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool, tools=None
) -> TokenizedExample:
    """tokenize_conversation for messages holding control-token text: ids from the sanitized
    encoding, assistant turns found by encoding the conversation prefix by prefix."""
    ids = _sanitized_ids(tokenizer, messages, add_generation_prompt=False, tools=tools)
    labels = list(ids) if train_on_prompt else [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if train_on_prompt or message["role"] != "assistant":
            continue
        before = _sanitized_ids(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        through = _sanitized_ids(
            tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools
        )
        end = _ids_turn_end(through, ids, tokenizer.eos_token_id)
        if end is None or ids[: len(before)] != before:
            raise TemplateError(
                "a message holds control-token text and its conversation does not encode "
                "turn by turn, so assistant tokens cannot be located; use "
                "data.train_on_prompt=true or remove that text"
            )
        labels[len(before) : end] = ids[len(before) : end]
    truncated = len(ids) > cutoff_len
    return TokenizedExample(ids[:cutoff_len], labels[:cutoff_len], truncated)


def _ids_turn_end(through: list[int], full: list[int], eos: int | None) -> int | None:
    """_turn_end on token ids."""
    if full[: len(through)] == through:
        return len(through)
    closed = eos is not None and through[-1:] == [eos] and full[-1:] == [eos]  # Phi-3 style
    if closed and full[: len(through) - 1] == through[:-1]:
        return len(through) - 1
    return None


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < span_end and end > span_start for span_start, span_end in spans)
