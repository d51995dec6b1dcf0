"""ROUGE-L, Self-Instruct with its novelty filter, and teacher answers for distillation data."""

from __future__ import annotations

import json
import logging
import zlib

import pytest
from test_llm_client import completion, serve

from tunesmith.data.synth import clean_instruction, rouge_l, self_instruct, teacher_answers
from tunesmith.models.client import OpenAIClient
from tunesmith.runs.inference import local_client

SEEDS = [
    {"instruction": "Write a poem about spring.", "input": "", "output": "Buds open..."},
    {"instruction": "Summarize the text.", "input": "Cats sleep a lot.", "output": "Cats nap."},
    {"instruction": "Give three tips for staying healthy.", "output": "Sleep, eat, move."},
    {"instruction": "What is the capital of France?", "output": "Paris."},
    {"instruction": "把这句话翻译成英文：你好", "output": "Hello"},
]


# --- ROUGE-L ---------------------------------------------------------------------------------


def test_rouge_l_known_values():
    assert rouge_l("The cat sat.", "the CAT sat") == 1.0  # case and punctuation do not count
    assert rouge_l("red green blue", "one two three") == 0.0
    # LCS of [the cat sat on the mat] and [the cat lay on a mat] is "the cat on mat": 2·4/(6+6)
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3)
    # P = 3/3, R = 3/4 → F1 = 2·3/(3+4)
    assert rouge_l("a b c", "a x b c") == pytest.approx(6 / 7)
    assert rouge_l("a b c", "a x b c") == rouge_l("a x b c", "a b c")  # F1 is symmetric
    assert rouge_l("", "anything") == 0.0 and rouge_l("...", "...") == 0.0


def test_rouge_l_counts_cjk_characters_as_tokens():
    assert rouge_l("今天天气很好", "今天天气很好") == 1.0
    assert rouge_l("今天天气很好", "今天天气不错") == pytest.approx(2 / 3)  # LCS 今天天气: 8/12
    assert rouge_l("写一首诗", "计算面积") == 0.0
    # Mixed text: Latin words and single Han characters ("用 python 写 排 序" vs "用 python 排 序").
    assert rouge_l("用Python写排序", "用python排序") == pytest.approx(2 * 4 / (5 + 4))


def test_clean_instruction_strips_labels_numbers_and_quotes():
    assert clean_instruction("1. Write a haiku.") == "Write a haiku."
    assert clean_instruction('Instruction: "Name a color."') == "Name a color."
    assert clean_instruction("New task 9: List fruits.") == "List fruits."
    assert clean_instruction("新指令：写一首诗") == "写一首诗"
    assert clean_instruction("Explain 3.5 percent.") == "Explain 3.5 percent."


# --- Self-Instruct ---------------------------------------------------------------------------

SCRIPT = [
    # round 1
    "Write a short poem about spring.",  # ROUGE-L 10/11 against the first seed
    "1. Translate the sentence 'good morning' into French.",
    "Translate the sentence 'good night' into French.",  # 12/14 against the one just kept
    "Hi",
    # round 2
    "List three prime numbers greater than fifty.",
    "   ",
    "translate the sentence 'Good morning' into French!",
    "Explain why the sky looks blue at noon.",  # its answer comes back empty
    # round 3
    'Instruction: "Name the largest planet in the solar system."',
    "Hi there",
    "",
    "Write a poem about spring",
]


def scripted(script: list[str]):
    queue = list(script)

    def respond(method, path, body, headers):
        prompt = body["messages"][-1]["content"]
        if "Here are some example tasks" in prompt:
            return 200, completion(queue.pop(0) if queue else "")
        return 200, completion("" if "sky" in prompt else f"Answer: {prompt}")

    return respond


def test_self_instruct_rejects_near_duplicates_with_reasons():
    with serve(scripted(SCRIPT)) as (url, seen):
        client = OpenAIClient(url, model="m", concurrency=1)  # one at a time: scripted order
        records, stats = self_instruct(SEEDS, client, n=3, batch=4, seed=1)
    kept = [
        "Translate the sentence 'good morning' into French.",
        "List three prime numbers greater than fifty.",
        "Name the largest planet in the solar system.",
    ]
    assert records == [{"instruction": i, "input": "", "output": f"Answer: {i}"} for i in kept]
    assert stats["rejected"] == {
        "similar": 2,
        "too_short": 2,
        "empty": 2,
        "duplicate": 2,
        "empty_output": 1,
    }
    assert (stats["generated"], stats["kept"], stats["rounds"]) == (12, 3, 3)
    assert stats["stopped"] == "n_reached" and stats["surplus"] == 0
    first_prompt = seen[0]["body"]["messages"][0]["content"]
    assert (
        first_prompt.count("\n1. ") == 1 and "\n4. " in first_prompt and "\n5. " not in first_prompt
    )
    # Later rounds sample from the grown pool too; the seed's input travels with its instruction.
    shown = " ".join(r["body"]["messages"][0]["content"] for r in seen)
    assert "Summarize the text.\nCats sleep a lot." in shown


def content_client(log: list[str]):
    """A deterministic fake model: each answer is a function of its prompt."""
    verbs = ["Describe", "Compare", "List", "Explain", "Invent", "Rank", "Critique", "Plan"]
    topics = ["volcanoes", "jazz", "taxes", "origami", "tides", "chess", "bread", "comets"]

    class Client:
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            out = []
            for conv in conversations:
                prompt = conv[-1]["content"]
                log.append(prompt)
                h = zlib.crc32(prompt.encode())
                words = f"{verbs[h % 8]} {topics[h // 8 % 8]} for a {h % 97}-year-old reader"
                out.append(words if "example tasks" in prompt else f"ok {h}")
            return out

    return Client()


def test_self_instruct_is_deterministic_for_a_seed():
    runs = []
    for seed in (7, 7, 8):
        prompts: list[str] = []
        records, stats = self_instruct(SEEDS, content_client(prompts), n=5, seed=seed, batch=4)
        runs.append((records, stats, prompts))
    assert runs[0] == runs[1]
    assert runs[0][2] != runs[2][2]  # another seed samples other in-context examples
    records, stats, _ = runs[0]
    assert len(records) == stats["kept"] == 5
    assert stats["generated"] == stats["kept"] + sum(stats["rejected"].values()) + stats["surplus"]


def test_self_instruct_stops_after_max_rounds():
    class Parrot:  # always proposes a rewording of the first seed
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            return ["Write a poem about the spring."] * len(conversations)

    records, stats = self_instruct(SEEDS, Parrot(), n=10, batch=3, max_rounds=2)
    assert records == []
    assert stats["rejected"] == {"similar": 6}
    assert (stats["rounds"], stats["stopped"]) == (2, "max_rounds")


def test_self_instruct_needs_instructions():
    with pytest.raises(ValueError, match="at least one seed record"):
        self_instruct([{"output": "x"}], object(), n=1)


def test_self_instruct_accounting_with_a_local_model(tiny_model_dir):
    client = local_client(str(tiny_model_dir))
    records, stats = self_instruct(SEEDS, client, n=1, batch=2, max_rounds=1, max_new_tokens=8)
    assert stats["generated"] == 2 and stats["rounds"] == 1
    assert stats["generated"] == stats["kept"] + sum(stats["rejected"].values()) + stats["surplus"]
    assert len(records) == stats["kept"]
    assert all(set(r) == {"instruction", "input", "output"} for r in records)


# --- teacher answers -------------------------------------------------------------------------


def teacher(method, path, body, headers):
    question = body["messages"][-1]["content"]
    if question == "long":
        return 200, completion("and so on and so on", "length")
    return 200, completion("" if question == "blank" else f"A: {question}")


PROMPTS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "long"}],
    [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "blank"},
    ],
]


def test_teacher_answers_become_sft_records_and_bad_ones_are_reported():
    rejected = []
    with serve(teacher) as (url, seen):
        client = OpenAIClient(url, model="teacher")
        records = teacher_answers(PROMPTS, client, 64, reject=lambda p, r: rejected.append((p, r)))
    assert records == [{"messages": [*PROMPTS[0], {"role": "assistant", "content": "A: hi"}]}]
    assert sorted(rejected, key=lambda x: x[1]) == [
        (PROMPTS[2], "empty"),
        (PROMPTS[1], "unfinished"),
    ]
    assert {r["body"]["max_tokens"] for r in seen} == {64}
    assert {r["body"]["temperature"] for r in seen} == {0.0}
    assert PROMPTS[1] == [{"role": "user", "content": "long"}]  # prompts are not modified


def test_teacher_answers_log_what_they_leave_out(caplog):
    with serve(teacher) as (url, _), caplog.at_level(logging.WARNING):
        records = teacher_answers(PROMPTS, OpenAIClient(url, model="t"))
    assert len(records) == 1
    assert "'unfinished': 1" in caplog.text and "'empty': 1" in caplog.text


def test_teacher_prompts_must_end_with_a_user_turn():
    bad = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    with pytest.raises(ValueError, match=r"prompt 0: .* must end with a user turn"):
        teacher_answers(bad, object())


def test_read_prompts_takes_the_question_of_every_format(tmp_path):
    from tunesmith.data.synth import read_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "What is 2 + 2?"},
        {"instruction": "Name a colour", "input": "", "output": ""},
        {"instruction": "Name a fruit", "output": "Apple"},  # its answer is dropped
        {
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Hi"},
            ]
        },
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hey"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = [messages for _, messages in read_prompts(str(path))]
    assert prompts == [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "Name a colour"}],
        [{"role": "user", "content": "Name a fruit"}],
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Yo"}],
    ]


def test_read_prompts_names_the_line_of_a_bad_record(tmp_path):
    from tunesmith.data.synth import read_prompts
    from tunesmith.utils.errors import DataError

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: unsupported role 'robot'"):
        read_prompts(str(path))
