"""Benchmarks: multiple choice (MMLU / C-Eval / CMMLU layout) and GSM8K-style numeric answers.

Multiple choice is scored two ways. `loglik`: the log-likelihood of each choice's text as the
continuation of the question (cloze form, no lettered options), summed (accuracy) and divided
by its token count (accuracy_norm, which does not favour short choices); this needs a
transformers model. `generate`: the model
answers through its chat template and the letter is extracted from its reply; a reply with no
recognisable letter is counted wrong and reported as unparsed, never guessed. GSM8K items
(`#### 42` at the end of the reference) are always generated; the last number of the reply is
the answer. Few-shot examples come from a dev file, or are the first k items, which are then
not scored.

Records: `question` with `A`..`D` (more letters allowed) or `choices: [...]`; `answer` as a
letter, a 0-based index or the choice text; optional `id`, `subject`. Keys are case-insensitive
(CMMLU's `Question`/`Answer`). A source is a local json/jsonl/csv/parquet file, `sample` (the
shipped sample), or a hub dataset `name[:subset]` loaded with `datasets` when online.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.data.readers import SUPPORTED_SUFFIXES, read_records
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.models.engine import GenerationParams
from tunesmith.models.perplexity import padded_nll
from tunesmith.utils.errors import ConfigError, DataError, ModelError

LETTERS = "ABCDEFGHIJ"
SAMPLE = "sample"
MC_MAX_NEW_TOKENS = 32  # a letter, perhaps with a short sentence around it
MATH_MAX_NEW_TOKENS = 256  # room for step-by-step working

# (context, continuation) pairs -> (summed log-probability, continuation tokens) for each pair
Scorer = Callable[[list[tuple[str, str]]], list[tuple[float, int]]]


@dataclass
class ChoiceItem:
    id: str
    question: str
    choices: list[str]
    answer: int  # index into choices
    subject: str | None = None


@dataclass
class NumericItem:
    id: str
    question: str
    solution: str  # the reference working, ending in "#### <answer>"
    answer: str  # the normalised number
    subject: str | None = None


Item = ChoiceItem | NumericItem


# --- loading -----------------------------------------------------------------------------------


def load_benchmark(source: str | Path, split: str = "test") -> list[Item]:
    """Items of a local file, the shipped sample, or a hub dataset (`name[:subset]`)."""
    source = str(source)
    if source == SAMPLE:
        path = importlib.resources.files("tunesmith.evaluation") / "data" / "mc_sample.jsonl"
        with importlib.resources.as_file(path) as local:
            return _from_records((f"mc_sample.jsonl:{r.line}", r.data) for r in read_records(local))
    if Path(source).exists() or Path(source).suffix.lower() in SUPPORTED_SUFFIXES:
        return _from_records((r.where, r.data) for r in read_records(source))
    return _from_records(_hub_records(source, split))


def _hub_records(source: str, split: str):
    name, _, subset = source.partition(":")
    try:
        import datasets

        rows = datasets.load_dataset(name, subset or None, split=split)
    except Exception as exc:  # offline, unknown name, missing subset: all one message
        raise DataError(
            f"benchmark '{source}' is not a local file and could not be loaded from the "
            f"Hugging Face Hub (offline, or no such dataset / subset / split '{split}'): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    return ((f"{source}[{i}]", dict(row)) for i, row in enumerate(rows))


def _from_records(records) -> list[Item]:
    items = [parse_item(data, where) for where, data in records]
    if not items:
        raise DataError("the benchmark has no items")
    return items


def parse_item(data: dict, where: str) -> Item:
    """One record as a multiple-choice or numeric item; `where` (file:line) names it in errors."""
    rec = {str(k).strip().lower(): v for k, v in data.items()}
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: no 'question' text")
    if "answer" not in rec:
        raise DataError(f"{where}: no 'answer' field")
    item_id = str(rec.get("id") if rec.get("id") not in (None, "") else where)
    subject = rec.get("subject") or rec.get("category")
    choices = _choices(rec, where)
    if choices is None:
        return _numeric_item(item_id, question, rec["answer"], where, subject)
    answer = _answer_index(rec["answer"], choices, where)
    return ChoiceItem(item_id, question.strip(), choices, answer, subject)


def _choices(rec: dict, where: str) -> list[str] | None:
    if "choices" in rec:
        choices = rec["choices"]
        if isinstance(choices, dict):  # ARC style {"label": [...], "text": [...]}
            choices = choices.get("text")
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"{where}: 'choices' must be a list of at least two options")
        return [str(c).strip() for c in choices]
    letters = [letter for letter in LETTERS if letter.lower() in rec]
    if not letters:
        return None
    if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
        raise DataError(f"{where}: choice columns must be A, B, C, ... in order; got {letters}")
    return [str(rec[letter.lower()]).strip() for letter in letters]


def _answer_index(answer: object, choices: list[str], where: str) -> int:
    valid = LETTERS[: len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in valid and answer.strip():
        index = valid.index(answer.strip().upper())
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and answer.strip() in choices:
        index = choices.index(answer.strip())
    else:
        index = -1
    if not 0 <= index < len(choices):
        raise DataError(
            f"{where}: answer {answer!r} is not one of the choices: expected a letter "
            f"{valid[0]}-{valid[-1]}, an index 0-{len(choices) - 1} or a choice's text"
        )
    return index


def _numeric_item(item_id, question, answer, where, subject) -> NumericItem:
    text = str(answer)
    gold = gold_number(text)
    if gold is None:
        raise DataError(
            f"{where}: no choices (A, B, ... or 'choices') and the answer {text[-60:]!r} has no "
            "number: expected a multiple-choice record or a GSM8K answer ending in '#### <n>'"
        )
    return NumericItem(item_id, question.strip(), text.strip(), gold, subject)


# --- answer extraction -------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_EXPLICIT = (  # most specific first; each captures an upper-case letter ("a" is a word)
    r"(?i:answer)\s*(?i:is|:)?\s*(?i:option\s*)?[\(\[\*]*\s*([A-J])\b",
    r"(?:答案|选项|正确答案|答)\s*(?:是|为|应该是|应为)?\s*[:：]?\s*[\(（\[\*]*\s*([A-J])",
    r"选\s*([A-J])",
    r"\*\*\s*\(?([A-J])\)?[\.\):]?\s*\*\*",
    r"^\s*[\(\[]?([A-J])(?:[\)\]\.:：、]|\s*$)",  # "B." or "(B)" opening a line
)


def extract_choice(text: str, choices: Sequence[str]) -> int | None:
    """The chosen index in a free-form reply, or None when no single answer can be read."""
    text = unicodedata.normalize("NFKC", text)  # full-width Ｂ and （ ） as ASCII
    valid = LETTERS[: len(choices)]
    for pattern in _EXPLICIT:
        match = re.search(pattern, text, flags=re.MULTILINE)
        if match and match.group(1) in valid:
            return valid.index(match.group(1))
    # A lone capital letter anywhere, when only one valid letter is mentioned.
    letters = {
        m.group(1)
        for m in re.finditer(rf"(?<![A-Za-z])([{valid}])(?![A-Za-z])", text)
        if not _is_word(text, m.start())
    }
    if len(letters) == 1:
        return valid.index(letters.pop())
    quoted = [i for i, choice in enumerate(choices) if choice and choice in text]
    return quoted[0] if len(quoted) == 1 else None


def _is_word(text: str, at: int) -> bool:
    """'A' or 'I' opening a sentence before a lower-case word: the article or the pronoun."""
    opens_sentence = not text[:at].strip() or text[:at].rstrip()[-1] in ".!?。！？"
    return text[at] in "AI" and opens_sentence and re.match(r" [a-z]", text[at + 1 :]) is not None


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5', '-3.0' -> '-3'; None when it is not a number."""
    cleaned = text.replace(",", "").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def gold_number(reference: str) -> str | None:
    """The number after the last '####' of a GSM8K reference (or the whole text's number)."""
    tail = reference.rsplit("####", 1)[-1]
    numbers = _NUMBER.findall(tail)
    return normalize_number(numbers[-1]) if numbers else None


def extract_number(text: str) -> str | None:
    """A reply's answer: the number after '####' when there is one, else its last number."""
    if "####" in text:
        numbers = _NUMBER.findall(text.rsplit("####", 1)[-1])
        if numbers:
            return normalize_number(numbers[0])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


# --- prompts -----------------------------------------------------------------------------------


def _is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _labels(item: Item) -> tuple[str, str]:
    """(header, answer label) in the scored item's language."""
    if _is_chinese(item.question):
        return "以下是单项选择题，请选出正确答案。", "答案："
    return "The following are multiple choice questions (with answers).", "Answer:"


def format_question(item: ChoiceItem) -> str:
    lines = [item.question, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))]
    return "\n".join(lines)


def few_shot_prompt(item: Item, shots: Sequence[Item], options: bool = True) -> str:
    """The text prompt: solved examples, then the item, ending with the answer label.

    `options=False` is the cloze form for log-likelihood scoring: the choices are not listed
    and each is scored as the answer's text; small models score far above chance this way,
    while with lettered options they barely beat it (SmolLM2-135M on the sample: 0.50 vs 0.31).
    """
    if isinstance(item, NumericItem):
        examples = [f"Question: {s.question}\nAnswer: {s.solution}" for s in shots]
        return "\n\n".join([*examples, f"Question: {item.question}\nAnswer:"])
    header, label = _labels(item)
    shown = [s for s in shots if isinstance(s, ChoiceItem)]
    if not options:
        examples = [f"{s.question}\n{label} {s.choices[s.answer]}" for s in shown]
        return "\n\n".join([*examples, f"{item.question}\n{label}"])
    examples = [f"{format_question(s)}\n{label} {LETTERS[s.answer]}" for s in shown]
    return "\n\n".join([header, *examples, f"{format_question(item)}\n{label}"])


def chat_prompt(item: Item, shots: Sequence[Item]) -> list[dict]:
    """The conversation for generation mode: examples and an answer-format instruction."""
    if isinstance(item, NumericItem):
        ask = "Solve the last problem step by step and end with '#### <number>'."
    elif _is_chinese(item.question):
        ask = "请只回答正确选项的字母。"
    else:
        ask = "Answer with the letter of the correct choice only."
    return [{"role": "user", "content": f"{few_shot_prompt(item, shots)}\n\n{ask}"}]


def split_shots(
    items: list[Item], shots: int, dev: list[Item] | None = None
) -> tuple[list[Item], list[Item]]:
    """(examples, items to score): the first `shots` of dev, or of the items, then not scored."""
    if shots < 0:
        raise ConfigError(f"eval.benchmark.shots must be >= 0, got {shots}")
    pool = dev if dev is not None else items
    needed = shots if dev is not None else shots + 1  # at least one item left to score
    if len(pool) < needed:
        raise ConfigError(
            f"eval.benchmark.shots={shots} needs {needed} items, and only {len(pool)} are there"
        )
    examples = pool[:shots]
    return examples, (items if dev is not None else items[shots:])


# --- scoring -----------------------------------------------------------------------------------


@torch.no_grad()
def continuation_logprobs(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8
) -> list[tuple[float, int]]:
    """(summed log-probability of the continuation tokens, their count) for each pair.

    Context and continuation are tokenized apart and joined, so the continuation's tokens are
    the same for every context; batches are length-sorted and left-padded."""
    rows = []
    for context, continuation in pairs:
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ctx or not cont:
            raise DataError(f"cannot score an empty prompt or choice: {continuation[:40]!r}")
        rows.append((ctx + cont, len(cont)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            # left-padded: every continuation ends in the last column (see padded_nll)
            batch = [
                (ids, [IGNORE_INDEX] * (len(ids) - n) + ids[-n:])
                for ids, n in (rows[i] for i in chunk)
            ]
            nlls = padded_nll(model, batch, tokenizer.pad_token_id or 0, left=True)
            for i, (nll, _) in zip(chunk, nlls, strict=True):
                results[i] = (-nll, rows[i][1])
    finally:
        model.train(was_training)
    return results


def model_scorer(model, tokenizer, batch_size: int = 8) -> Scorer:
    return lambda pairs: continuation_logprobs(model, tokenizer, pairs, batch_size)


def score_loglik(items: list[ChoiceItem], shots: list[Item], scorer: Scorer) -> list[dict]:
    """Per-item results: the choice with the highest sum, and with the highest mean per token."""
    pairs = [
        (few_shot_prompt(it, shots, options=False), f" {c}") for it in items for c in it.choices
    ]
    scores = iter(scorer(pairs))
    results = []
    for item in items:
        own = [next(scores) for _ in item.choices]
        total = [s for s, _ in own]
        mean = [s / n for s, n in own]
        chosen, chosen_norm = _argmax(total), _argmax(mean)
        results.append(
            _choice_result(item, chosen)
            | {
                "chosen_norm": LETTERS[chosen_norm],
                "correct_norm": int(chosen_norm == item.answer),
                "logprobs": [round(s, 4) for s in total],
            }
        )
    return results


def score_generated(
    items: list[Item], shots: list[Item], engine, max_new_tokens: int | None = None
) -> list[dict]:
    """Per-item results from the model's replies (chat template), answers extracted."""
    by_item: dict[int, dict] = {}
    for kind, limit in ((ChoiceItem, MC_MAX_NEW_TOKENS), (NumericItem, MATH_MAX_NEW_TOKENS)):
        group = [it for it in items if isinstance(it, kind)]
        if not group:
            continue
        params = GenerationParams(max_new_tokens=max_new_tokens or limit)
        replies = engine.generate([chat_prompt(it, shots) for it in group], params)
        for item, reply in zip(group, replies, strict=True):
            by_item[id(item)] = _generated_result(item, reply.text)
    return [by_item[id(it)] for it in items]  # input order


def _generated_result(item: Item, output: str) -> dict:
    if isinstance(item, NumericItem):
        chosen = extract_number(output)
        result = _result(item, chosen, item.answer, chosen == item.answer)
    else:
        index = extract_choice(output, item.choices)
        result = _choice_result(item, index)
    return result | {"output": output}


def _choice_result(item: ChoiceItem, chosen: int | None) -> dict:
    letter = LETTERS[chosen] if chosen is not None else None
    return _result(item, letter, LETTERS[item.answer], chosen == item.answer)


def _result(item: Item, chosen: str | None, gold: str, correct: bool) -> dict:
    return {
        "id": item.id,
        "subject": item.subject,
        "gold": gold,
        "chosen": chosen,
        "correct": int(correct),
    }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # ties: the first choice


# --- the task ----------------------------------------------------------------------------------


def run_benchmark(
    engine,
    source: str | Path = SAMPLE,
    shots: int = 0,
    mode: str = "loglik",
    max_items: int | None = None,
    dev: str | Path | None = None,
    max_new_tokens: int | None = None,
    scorer: Scorer | None = None,
) -> dict:
    """Accuracy and per-item results (id, subject, gold, chosen, correct) of one benchmark.

    `scorer` replaces the model's log-likelihoods (tests, or an API that returns them)."""
    if mode not in ("loglik", "generate"):
        raise ConfigError(f"eval.benchmark.mode must be 'loglik' or 'generate', got '{mode}'")
    examples, scored = split_shots(
        load_benchmark(source), shots, load_benchmark(dev) if dev else None
    )
    scored = scored[:max_items] if max_items else scored
    choice = [it for it in scored if isinstance(it, ChoiceItem)]
    results: list[dict] = []
    if mode == "loglik" and choice:
        results += score_loglik(choice, examples, scorer or _engine_scorer(engine))
    rest = [it for it in scored if mode == "generate" or isinstance(it, NumericItem)]
    results += score_generated(rest, examples, engine, max_new_tokens) if rest else []
    return summarize(results, source=str(source), mode=mode, shots=shots)


def _engine_scorer(engine) -> Scorer:
    if not hasattr(engine, "model"):
        raise ConfigError(
            "eval.benchmark.mode=loglik needs the transformers engine (it reads the model's "
            "log-probabilities); use mode=generate with this engine"
        )
    return model_scorer(engine.model, engine.tokenizer, getattr(engine, "batch_size", 8))


def summarize(results: list[dict], **about) -> dict:
    """Accuracy overall and per subject, plus unparsed replies and the per-item results."""
    n = len(results)
    summary = {**about, "items": n, "accuracy": sum(r["correct"] for r in results) / n}
    if any("correct_norm" in r for r in results):
        normed = [r.get("correct_norm", r["correct"]) for r in results]
        summary["accuracy_norm"] = sum(normed) / n
    if any("output" in r for r in results):
        summary["unparsed"] = sum(r["chosen"] is None for r in results if "output" in r)
    by_subject: dict[str, list[int]] = defaultdict(list)
    for r in results:
        by_subject[r["subject"] or "all"].append(r["correct"])
    summary["by_subject"] = {k: sum(v) / len(v) for k, v in sorted(by_subject.items())}
    summary["results"] = results
    return summary


def run_lm_eval(
    model_path: str | Path,
    tasks: Sequence[str],
    num_fewshot: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    adapter: str | Path | None = None,
    device: str | None = None,
) -> dict:
    """Run lm-evaluation-harness tasks on a local model folder; its `results` dict per task."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ModelError(
            "the lm-evaluation-harness bridge needs the lm_eval package: pip install lm-eval"
        )
    import lm_eval

    model_args = f"pretrained={model_path}" + (f",peft={adapter}" if adapter else "")
    output = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    return output["results"]
