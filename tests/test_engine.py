"""The batched generation engine: equal to one-by-one generate, order, stops, stream, guards."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config.schema import ModelConfig
from tunesmith.data.render import prompt_ids
from tunesmith.models.engine import (
    Completion,
    Engine,
    GenerationParams,
    TransformersEngine,
    VLLMEngine,
    _sendable,
    whole_chars,
)
from tunesmith.models.generate import generate_replies
from tunesmith.runs.inference import create_engine
from tunesmith.utils.errors import ConfigError, ModelError

# Prompts of very different lengths, deliberately not sorted by length.
CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "What is the capital of France? Answer briefly and kindly."}],
    [{"role": "user", "content": "你好"}],
    [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "who are you?"},
        {"role": "assistant", "content": "I am a small assistant."},
        {"role": "user", "content": "0123456789"},
    ],
    [{"role": "user", "content": "? ! ."}],
]


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _one_by_one(model, tokenizer, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


def _text(tokenizer, tokens: list[int]) -> str:
    """The text of whole characters (a random model's last bytes may not finish one)."""
    return whole_chars(lambda t: tokenizer.decode(t, skip_special_tokens=True), tokens)


def test_batched_greedy_equals_one_by_one_in_input_order(model, tiny_tokenizer):
    engine = TransformersEngine(model, tiny_tokenizer, batch_size=2)  # 3 batches, padded
    completions = engine.generate(CONVERSATIONS, GenerationParams(max_new_tokens=12))
    for conv, got in zip(CONVERSATIONS, completions, strict=True):
        ids = prompt_ids(tiny_tokenizer, conv)
        tokens = _one_by_one(model, tiny_tokenizer, ids, 12)
        assert got.text == _text(tiny_tokenizer, tokens)
        assert got.prompt_tokens == len(ids)
        assert got.completion_tokens == len(tokens)
    # Batched with everything at once, and unbatched, give the same list.
    alone = [engine.generate([c], GenerationParams(max_new_tokens=12))[0] for c in CONVERSATIONS]
    big = TransformersEngine(model, tiny_tokenizer, batch_size=16)
    assert big.generate(CONVERSATIONS, GenerationParams(max_new_tokens=12)) == alone


def test_complete_uses_raw_text_without_chat_template(model, tiny_tokenizer):
    engine = TransformersEngine(model, tiny_tokenizer, batch_size=4)
    prompts = ["The capital of France is", "hello who"]
    got = engine.complete(prompts, GenerationParams(max_new_tokens=6))
    for prompt, completion in zip(prompts, got, strict=True):
        ids = tiny_tokenizer(prompt)["input_ids"]
        expected = _one_by_one(model, tiny_tokenizer, ids, 6)
        assert completion.text == tiny_tokenizer.decode(expected, skip_special_tokens=True)
        assert completion.prompt_tokens == len(ids)


def test_stop_string_cuts_text_and_counts_tokens_up_to_it(model, tiny_tokenizer):
    engine = TransformersEngine(model, tiny_tokenizer)
    conv = CONVERSATIONS[1]
    full = engine.generate([conv], GenerationParams(max_new_tokens=20))[0]
    assert full.finish_reason == "length" and len(full.text) >= 8
    stop = full.text[5:7]
    cut = engine.generate([conv], GenerationParams(max_new_tokens=20, stop=[stop, "never-seen"]))
    assert cut[0].text == full.text[: full.text.find(stop)]
    assert cut[0].finish_reason == "stop"
    # The fewest tokens whose text contains the stop string.
    tokens = _one_by_one(model, tiny_tokenizer, prompt_ids(tiny_tokenizer, conv), 20)
    k = cut[0].completion_tokens
    assert stop in tiny_tokenizer.decode(tokens[:k]) and stop not in tiny_tokenizer.decode(
        tokens[: k - 1]
    )


def test_finish_reason_is_stop_on_end_token_and_length_otherwise(model, tiny_tokenizer):
    conv = CONVERSATIONS[0]
    tokens = _one_by_one(model, tiny_tokenizer, prompt_ids(tiny_tokenizer, conv), 10)
    params = GenerationParams(max_new_tokens=10)
    plain = TransformersEngine(model, tiny_tokenizer).generate([conv], params)[0]
    assert (plain.finish_reason, plain.completion_tokens) == ("length", 10)
    # Make the 4th generated token an end token: generation stops there.
    end = tokens.index(tokens[3])
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, tokens[3]]
    stopped = TransformersEngine(model, tiny_tokenizer).generate([conv], params)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == end + 1  # the end token counts, its text does not
    assert stopped.text == _text(tiny_tokenizer, tokens[:end])
    replies = generate_replies(model, tiny_tokenizer, [conv, CONVERSATIONS[1]], 10)
    assert replies[0].finished and replies[0].text == stopped.text.strip()


@pytest.mark.parametrize("stop", [[], ["e"], ["zz-never"]])
def test_stream_concatenation_equals_generate(model, tiny_tokenizer, stop):
    engine = TransformersEngine(model, tiny_tokenizer)
    params = GenerationParams(max_new_tokens=16, stop=stop)
    for conv in CONVERSATIONS[:3]:
        deltas = list(engine.stream(conv, params))
        assert "".join(deltas) == engine.generate([conv], params)[0].text


def test_stream_holds_back_a_possible_stop_prefix():
    assert _sendable("Hel", ["o w"]) == ("Hel", False)
    assert _sendable("Hello wo", ["o w"]) == ("Hell", True)
    # "b" may start "bx", so it waits; once "c" shows it is not, both go out.
    assert _sendable("ab", ["bx"]) == ("a", False)
    assert _sendable("abc", ["bx"]) == ("abc", False)


def test_seed_makes_sampling_repeatable(model, tiny_tokenizer):
    engine = TransformersEngine(model, tiny_tokenizer, batch_size=2)

    def sample(seed: int) -> list[Completion]:
        params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        return engine.generate(CONVERSATIONS, params)

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_bad_params_and_empty_prompt_are_clear_errors(model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationParams(top_p=0)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationParams(temperature=-1)
    assert GenerationParams(stop="###").stop == ["###"]
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        TransformersEngine(model, tiny_tokenizer).complete(["hi", ""], GenerationParams())


def test_vllm_without_package_or_gpu_says_so(tiny_model_dir):
    with pytest.raises(ModelError, match="vllm engine needs") as info:
        create_engine(ModelConfig(name_or_path=str(tiny_model_dir)), kind="vllm")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="vllm engine needs"):
        VLLMEngine(str(tiny_model_dir), tokenizer=None)
    with pytest.raises(ConfigError, match="unknown engine 'onnx'"):
        create_engine(None, kind="onnx")


def test_create_engine_loads_a_model_folder(tiny_model_dir):
    engine = create_engine(ModelConfig(name_or_path=str(tiny_model_dir)), batch_size=3)
    assert isinstance(engine, Engine) and isinstance(engine, TransformersEngine)
    assert engine.batch_size == 3 and not engine.model.training


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_one_by_one():
    from tunesmith.models.load import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(
        ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32")
    )
    prompts = ["Hi!", "Name three colours.", "Explain in one sentence why the sky is blue.", "你好"]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    engine = TransformersEngine(model.eval(), tokenizer, batch_size=4)
    got = engine.generate(conversations, GenerationParams(max_new_tokens=8))
    for conv, completion in zip(conversations, got, strict=True):
        tokens = _one_by_one(model, tokenizer, prompt_ids(tokenizer, conv), 8)
        end = next((k for k, t in enumerate(tokens) if t in engine.eos_ids), len(tokens))
        assert completion.text == tokenizer.decode(tokens[:end], skip_special_tokens=True)


def test_stream_batch_rows_equal_one_at_a_time_generate(model, tiny_tokenizer):
    """Streams share a batch but keep their own max_tokens, stop strings and end."""
    engine = TransformersEngine(model, tiny_tokenizer, batch_size=3)  # 2 batches
    params = [
        GenerationParams(max_new_tokens=n, stop=stop)
        for n, stop in ((12, []), (5, []), (16, ["e"]), (9, ["zz-never"]), (14, [" "]))
    ]
    rows: dict[int, list] = {i: [] for i in range(len(CONVERSATIONS))}
    engine.stream_batch(CONVERSATIONS, params, lambda row, delta: rows[row].append(delta))
    for i, (conv, p) in enumerate(zip(CONVERSATIONS, params, strict=True)):
        assert rows[i][-1] is None and None not in rows[i][:-1]  # one end, last
        assert all(rows[i][:-1])  # no empty deltas
        assert "".join(rows[i][:-1]) == engine.generate([conv], p)[0].text


def test_cancelled_rows_stop_and_the_rest_go_on(model, tiny_tokenizer):
    import threading

    engine = TransformersEngine(model, tiny_tokenizer, batch_size=4)
    params = GenerationParams(max_new_tokens=20)
    events = [threading.Event() for _ in CONVERSATIONS[:3]]
    rows: dict[int, list] = {i: [] for i in range(3)}

    def emit(row, delta):
        rows[row].append(delta)
        if row == 1 and len(rows[row]) == 2:
            events[1].set()  # the client of row 1 leaves after two deltas

    engine.stream_batch(CONVERSATIONS[:3], [params] * 3, emit, events)
    assert len(rows[1]) <= 3 and rows[1][-1] is None  # stopped at its next token
    for i in (0, 2):
        assert "".join(rows[i][:-1]) == engine.generate([CONVERSATIONS[i]], params)[0].text
    # whole replies: a cancelled prompt is cut short, the others are unchanged; a batch whose
    # prompts are all cancelled is not generated at all
    events = [threading.Event(), threading.Event()]
    events[0].set()
    got = engine.generate(CONVERSATIONS[:2], params, events)
    assert got[0].text == engine.generate(CONVERSATIONS[:1], GenerationParams(1))[0].text
    assert got[1] == engine.generate(CONVERSATIONS[1:2], params)[0]
    events[1].set()
    assert [c.completion_tokens for c in engine.generate(CONVERSATIONS[:2], params, events)] == [
        0,
        0,
    ]


def test_prompt_learning_adapters_answer_as_they_do_alone(model, tiny_tokenizer):
    """PEFT's prompt tuning ignores position ids: left padding would change its replies, so such
    a model generates (and streams) one prompt at a time."""
    from peft import PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    engine = TransformersEngine(peft_model.eval(), tiny_tokenizer, batch_size=4)
    assert engine.rows_per_batch() == 1
    params = GenerationParams(max_new_tokens=8)
    alone = [engine.generate([conv], params)[0].text for conv in CONVERSATIONS[:3]]
    assert [c.text for c in engine.generate(CONVERSATIONS[:3], params)] == alone
    rows: dict[int, list] = {i: [] for i in range(3)}
    engine.stream_batch(CONVERSATIONS[:3], [params] * 3, lambda r, d: rows[r].append(d))
    assert ["".join(rows[i][:-1]) for i in range(3)] == alone
