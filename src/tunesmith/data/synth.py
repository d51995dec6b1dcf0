"""Synthetic data through a model: Self-Instruct from seed examples, teacher answers for
distillation.

Self-Instruct (Wang et al. 2023; chapter 3, L709–741): each round shows the model 4 instructions
sampled from the pool (seeds plus those kept so far) and asks for a new one. A candidate is kept
only if it is novel: its ROUGE-L against every pool instruction stays below 0.7 (the paper's
filter, which the seed leaves out). The model then answers each kept instruction. Teacher answers
(module 5, L820–846) are the "teacher output as SFT data" form of distillation.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable

from tunesmith.data.formats import RecordError, detect_format, to_conversation
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.utils.errors import DataError
from tunesmith.utils.llm import ChatClient, replies_of

log = logging.getLogger(__name__)

# Han ideographs, kana and their compatibility blocks: scripts written without spaces, where one
# character is one token. Hangul is written with spaces, so it is tokenized by words.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_TOKEN = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")

GENERATE_PROMPT = (
    "You are helping to build training data for an assistant. Here are some example tasks:\n\n"
    "{examples}\n\n"
    "Write one new task instruction that asks for something different from all of the examples "
    "(a different task, not a rewording). Use the same language as the examples. "
    "Reply with the instruction only."
)
# "Instruction:", "Task 5:", "1.", "新指令：" ... that models put before the instruction itself.
_PREFIX = re.compile(
    r"^\s*(?:(?:new\s+)?(?:task|instruction)\s*\d*\s*[:：.]|\d+\s*[.)、]|新?(?:指令|任务)\s*[:：])\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’「」"


def tokens(text: str) -> list[str]:
    """Lower-cased words for space-separated scripts, single characters for CJK."""
    return _TOKEN.findall(text.lower())


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts on `tokens` (0.0 when either has no token). The rouge-score
    package drops non-ASCII characters, which makes every Chinese pair score 0."""
    return _rouge_l_tokens(tokens(a), tokens(b))


def _rouge_l_tokens(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    lcs = _lcs_length(a, b)
    return 2 * lcs / (len(a) + len(b))  # F1 = 2PR/(P+R) with P = lcs/|a|, R = lcs/|b|


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Two rows of the O(|a|·|b|) table suffice for the length.
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _is_similar(candidate: list[str], pool: list[list[str]], threshold: float) -> bool:
    """Whether ROUGE-L against any pool item reaches `threshold`."""
    for other in pool:
        # F1 <= 2·min/(|a|+|b|): pairs of very different lengths cannot reach it; skip their LCS.
        bound = 2 * min(len(candidate), len(other)) / (len(candidate) + len(other))
        if bound >= threshold and _rouge_l_tokens(candidate, other) >= threshold:
            return True
    return False


def self_instruct(
    seed_instructions: list[dict],
    client: ChatClient,
    n: int,
    seed: int = 42,
    novelty_threshold: float = 0.7,
    batch: int = 8,
    max_rounds: int | None = None,
    min_tokens: int = 3,
    max_tokens: int = 150,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
) -> tuple[list[dict], dict]:
    """Up to `n` new alpaca records ({"instruction", "input": "", "output"}) and the stats.

    Each round asks for `batch` candidates, filters them (reasons: empty, too_short, too_long,
    duplicate, similar) and asks for the answers of the survivors (empty_output when blank).
    It stops at `n` kept or after `max_rounds` (default: 5× the rounds `n` needs at best).
    Stats: generated, kept, rejected {reason: count}, surplus, rounds, stopped.
    """
    pool = [_instruction_text(r) for r in seed_instructions]
    if not any(pool):
        raise ValueError("self_instruct needs at least one seed record with an 'instruction'")
    pool = [p for p in pool if p]
    pool_tokens = [tokens(p) for p in pool]
    seen = {_normal(p) for p in pool}
    max_rounds = max_rounds if max_rounds is not None else 5 * math.ceil(n / batch)
    rng = random.Random(seed)
    kept: list[dict] = []
    stats: dict = {"generated": 0, "kept": 0, "rejected": Counter(), "rounds": 0}
    while len(kept) < n and stats["rounds"] < max_rounds:
        stats["rounds"] += 1
        prompts = [_generation_prompt(rng.sample(pool, min(4, len(pool)))) for _ in range(batch)]
        candidates = client.chat(prompts, max_new_tokens=128, temperature=temperature)
        stats["generated"] += len(candidates)
        novel = []
        for raw in candidates:
            instruction = clean_instruction(raw)
            reason = _reject_reason(
                instruction, pool_tokens, seen, novelty_threshold, min_tokens, max_tokens
            )
            if reason:
                stats["rejected"][reason] += 1
                continue
            # Into the pool at once: a near-duplicate later in this batch is rejected too.
            pool.append(instruction)
            pool_tokens.append(tokens(instruction))
            seen.add(_normal(instruction))
            novel.append(instruction)
        kept += _answered(novel, client, max_new_tokens, temperature, stats["rejected"])
    stats["stopped"] = "n_reached" if len(kept) >= n else "max_rounds"
    # The last round may answer more than needed: generated == kept + rejected + surplus.
    stats["surplus"] = max(0, len(kept) - n)
    kept = kept[:n]
    stats["kept"] = len(kept)
    stats["rejected"] = dict(stats["rejected"])
    return kept, stats


def clean_instruction(text: str) -> str:
    """Strip list numbering, 'Instruction:'-like labels and wrapping quotes from a model reply."""
    text = _PREFIX.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _reject_reason(
    instruction: str,
    pool_tokens: list[list[str]],
    seen: set[str],
    threshold: float,
    min_tokens: int,
    max_tokens: int,
) -> str | None:
    toks = tokens(instruction)
    if not toks:
        return "empty"
    if len(toks) < min_tokens:
        return "too_short"
    if len(toks) > max_tokens:
        return "too_long"
    if _normal(instruction) in seen:
        return "duplicate"
    if _is_similar(toks, pool_tokens, threshold):
        return "similar"
    return None


def _answered(
    instructions: list[str],
    client: ChatClient,
    max_new_tokens: int,
    temperature: float,
    rejected: Counter,
) -> list[dict]:
    if not instructions:
        return []
    prompts = [[{"role": "user", "content": i}] for i in instructions]
    outputs = client.chat(prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    records = []
    for instruction, output in zip(instructions, outputs, strict=True):
        if output.strip():
            records.append({"instruction": instruction, "input": "", "output": output.strip()})
        else:
            rejected["empty_output"] += 1
    return records


def _instruction_text(record: dict) -> str:
    # A seed's input belongs to its task ("Summarize: <text>"), so the model sees both.
    instruction = str(record.get("instruction") or "").strip()
    extra = str(record.get("input") or "").strip()
    return f"{instruction}\n{extra}" if instruction and extra else instruction


def _generation_prompt(examples: list[str]) -> list[dict]:
    listed = "\n".join(f"{i}. {e}" for i, e in enumerate(examples, start=1))
    return [{"role": "user", "content": GENERATE_PROMPT.format(examples=listed)}]


def _normal(text: str) -> str:
    return " ".join(tokens(text))


def teacher_answers(
    prompts: list[list[dict]],
    client: ChatClient,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    reject: Callable[[list[dict], str], None] | None = None,
) -> list[dict]:
    """The teacher's answer to each prompt (a conversation ending with a user turn) as an SFT
    record {"messages": prompt + [assistant answer]}.

    An empty answer, or one cut short by `max_new_tokens`, would teach the student to stop or to
    ramble: it is left out and handed to `reject(prompt, reason)` (logged as a warning when no
    `reject` is given), so nothing disappears silently.
    """
    for i, prompt in enumerate(prompts):
        if not prompt or prompt[-1].get("role") != "user":
            raise ValueError(f"prompt {i}: a teacher prompt must end with a user turn")
    records, dropped = [], Counter()
    for prompt, reply in zip(
        prompts, replies_of(client, prompts, max_new_tokens, temperature), strict=True
    ):
        reason = "empty" if not reply.text.strip() else None if reply.finished else "unfinished"
        if reason is None:
            records.append({"messages": [*prompt, {"role": "assistant", "content": reply.text}]})
            continue
        dropped[reason] += 1
        if reject is not None:
            reject(prompt, reason)
    if dropped and reject is None:
        log.warning("teacher answers left out: %s", dict(dropped))
    return records


def read_prompts(path: str) -> list[tuple[RawRecord, list[dict]]]:
    """Teacher prompts from any supported file, each a conversation ending with a user turn.

    A record's own answer (alpaca output, a final assistant turn) is dropped: the teacher writes
    its own. A bare {"prompt"} / {"question"} / {"text"} record is one user turn.
    """
    prompts = []
    for record in read_records(path):
        bare = next(
            (record.data[k] for k in ("prompt", "question", "text") if k in record.data), None
        )
        if isinstance(bare, str) and bare.strip():
            prompts.append((record, [{"role": "user", "content": bare}]))
            continue
        try:
            fmt = detect_format(record.data)
            answered = RawRecord(record.source, record.line, _with_answer(record.data, fmt))
            prompts.append((record, to_conversation(answered, fmt).messages[:-1]))
        except RecordError as exc:
            raise DataError(f"{record.where}: {exc}") from None
    return prompts


def _with_answer(data: dict, fmt: str) -> dict:
    """The record with a placeholder answer where it ends on the question, so the format's own
    validation applies unchanged."""
    if fmt == "alpaca":
        return data if str(data.get("output") or "").strip() else {**data, "output": "-"}
    key, turn = (
        ("messages", {"role": "assistant", "content": "-"})
        if fmt == "openai"
        else ("conversations", {"from": "gpt", "value": "-"})
    )
    turns = data.get(key)
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        last = turns[-1].get("role", turns[-1].get("from"))
        if last in ("user", "human"):
            return {**data, key: [*turns, turn]}
    return data
