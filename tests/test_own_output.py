"""What the tool prints is its own: no library deprecation warnings from a training, and no
U+FFFD where generation stops in the middle of a character."""

from __future__ import annotations

import torch
from helpers import train_tiny

from tunesmith.models.engine import TransformersEngine, whole_chars
from tunesmith.models.generate import generate_replies

CAT = "好猫"  # 猫 is not in the tiny tokenizer's corpus: byte-level, 3 tokens


def test_training_with_checkpointing_raises_no_future_warning(
    tmp_path, tiny_model_dir, alpaca_file, recwarn
):
    """transformers 5 deprecated gradient_checkpointing_enable / is_gradient_checkpointing;
    training calls the new names, and PEFT's own question is not passed on to the user."""
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "gc",
        "train.max_steps=2",
        "train.gradient_checkpointing=true",
    )
    assert result.summary["steps"] == 2
    future = [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)]
    assert future == []


def _split_char(tokenizer) -> list[int]:
    ids = tokenizer.encode(CAT, add_special_tokens=False)
    last = tokenizer.encode("猫", add_special_tokens=False)
    assert len(last) >= 2 and ids[-len(last) :] == last  # the test's premise
    return ids[:-1]  # 好 and the first byte(s) of 猫


def test_whole_chars_drops_a_character_cut_short(tiny_tokenizer):
    cut = _split_char(tiny_tokenizer)
    assert tiny_tokenizer.decode(cut).endswith("\ufffd")  # what a plain decode gives
    assert whole_chars(tiny_tokenizer.decode, cut) == "好"
    whole = tiny_tokenizer.encode(CAT, add_special_tokens=False)
    assert whole_chars(tiny_tokenizer.decode, whole) == CAT
    assert whole_chars(tiny_tokenizer.decode, []) == ""
    # a U+FFFD the model wrote before its last character stays
    written = tiny_tokenizer.encode("\ufffd好", add_special_tokens=False)
    assert whole_chars(tiny_tokenizer.decode, written) == "\ufffd好"


def test_reply_cut_at_max_new_tokens_ends_with_whole_characters(tiny_model_dir, tiny_tokenizer):
    """generate_replies (chat, quickstart): a reply cut by max_new_tokens in the middle of a
    Chinese character ends before it, not with U+FFFD."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    new = _split_char(tiny_tokenizer)

    def generate(input_ids, attention_mask=None, max_new_tokens=0, **kwargs):
        assert max_new_tokens == len(new)
        rows = torch.tensor([new] * input_ids.shape[0], dtype=input_ids.dtype)
        return torch.cat([input_ids, rows], dim=1)

    model.generate = generate
    conversation = [{"role": "user", "content": "你好"}]
    reply = generate_replies(model, tiny_tokenizer, [conversation], max_new_tokens=len(new))[0]
    assert reply.text == "好" and not reply.finished
    engine = TransformersEngine(model, tiny_tokenizer)
    assert engine._decode(new) == "好"
