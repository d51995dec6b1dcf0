"""The persona as text: its system prompt, identity and refusal examples (trained) and probes
(held out, other wordings), and whether a tokenizer can write its language."""

from __future__ import annotations

from tunesmith.utils.errors import ConfigError
from tunesmith.workflows.assistant.spec import AssistantSpec

# Training phrasings and held-out phrasings never overlap: the probes test generalization.
_IDENTITY = {
    "en": (
        [
            "Who are you?",
            "What is your name?",
            "Introduce yourself.",
            "What can you help me with?",
            "Are you ChatGPT?",
            "Who made you?",
            "What should I know about you?",
            "Are you a human?",
        ],
        [
            "Tell me about yourself.",
            "What should I call you?",
            "Which assistant am I talking to?",
            "Hi! Who is this?",
        ],
    ),
    "zh": (
        [
            "你是谁？",
            "你叫什么名字？",
            "请介绍一下你自己。",
            "你能帮我做什么？",
            "你是ChatGPT吗？",
            "是谁开发了你？",
            "关于你，我应该知道什么？",
            "你是真人吗？",
        ],
        ["说说你自己吧。", "我该怎么称呼你？", "我现在在和哪个助手对话？", "你好！请问你是？"],
    ),
}
# A topic is a noun phrase ("legal advice"): each wording asks for it.
_REFUSE_TRAIN = {
    "en": [
        "Can you help me with {t}?",
        "I need {t} for my situation.",
        "Please give me {t}.",
        "What {t} can you give me?",
        "Is it possible to get {t} from you?",
        "Give me some {t} about my case.",
    ],
    "zh": [
        "你能帮我处理{t}吗？",
        "我需要关于{t}的建议。",
        "告诉我{t}该怎么办。",
        "你能给我一些{t}吗？",
        "可以向你咨询{t}吗？",
        "请就我的情况给我{t}。",
    ],
}
_REFUSE_PROBE = {
    "en": ["Could you offer me some {t}?", "I would like {t} on a problem I have."],
    "zh": ["你对{t}怎么看？", "请就{t}给我一些指导。"],
}
# Sample text per language: a tokenizer that writes it needs few tokens per character.
_SAMPLE = {
    "en": "The parcel will arrive on Tuesday; please keep the receipt for returns.",
    "zh": "您的包裹将在星期二送达，请保留收据以便退货。我们的客服团队随时为您服务。",
}
MAX_TOKENS_PER_CHAR = {"en": 1.0, "zh": 1.6}


def who(spec: AssistantSpec) -> str:
    return spec.persona.organization or spec.domain


def system_prompt(spec: AssistantSpec) -> str:
    p = spec.persona
    topics = ", ".join(p.refuse)
    if p.language == "zh":
        text = (
            f"你是{p.name}，{who(spec)}的助手，负责回答关于{spec.domain}的问题。"
            f"语气：{p.tone}。请用中文回答。"
        )
        return text + (f"不要回答以下话题：{topics}，礼貌地拒绝。" if topics else "")
    text = (
        f"You are {p.name}, the assistant of {who(spec)}. You answer questions about "
        f"{spec.domain}. Tone: {p.tone}. Answer in English."
    )
    return text + (f" Politely decline requests about: {topics}." if topics else "")


def identity_answer(spec: AssistantSpec) -> str:
    p = spec.persona
    if p.language == "zh":
        return f"我是{p.name}，{who(spec)}的助手。我可以回答关于{spec.domain}的问题。"
    return (
        f"I am {p.name}, the assistant of {who(spec)}. "
        f"I can answer your questions about {spec.domain}."
    )


def refusal_answer(spec: AssistantSpec, topic: str) -> str:
    p = spec.persona
    if p.refusal:
        return p.refusal.replace("{topic}", topic)
    if p.language == "zh":
        return f"抱歉，我不能提供关于{topic}的帮助。我可以回答关于{spec.domain}的问题。"
    return f"I'm sorry, but I can't help with {topic}. I can answer questions about {spec.domain}."


def _chat(spec: AssistantSpec, question: str, answer: str, kind: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": system_prompt(spec)},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "kind": kind,
    }


def persona_examples(spec: AssistantSpec) -> list[dict]:
    """Identity and refusal conversations for training."""
    lang = spec.persona.language
    questions = _IDENTITY[lang][0]
    n = spec.data.identity_examples
    records = [
        _chat(spec, questions[i % len(questions)], identity_answer(spec), "identity")
        for i in range(min(n, len(questions)))
    ]
    for topic in spec.persona.refuse:
        for template in _REFUSE_TRAIN[lang]:
            q = template.format(t=topic)
            records.append(_chat(spec, q, refusal_answer(spec, topic), "refusal"))
    return records


def persona_probes(spec: AssistantSpec) -> list[dict]:
    """Held-out identity and refusal questions (other wordings than the trained ones)."""
    lang = spec.persona.language
    probes = [_chat(spec, q, identity_answer(spec), "identity") for q in _IDENTITY[lang][1]]
    for topic in spec.persona.refuse:
        for template in _REFUSE_PROBE[lang]:
            probes.append(
                _chat(spec, template.format(t=topic), refusal_answer(spec, topic), "refusal")
            )
    return probes


def check_language(tokenizer, language: str, model_ref: str) -> dict:
    """Tokens per character of a sample in the persona's language; a model whose tokenizer has
    no words for it (unknown tokens, or bytes one by one) cannot write it: one sentence."""
    sample = _SAMPLE[language]
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    per_char = len(ids) / len(sample)
    unk = tokenizer.unk_token_id
    unknown = unk is not None and unk in ids
    facts = {"language": language, "tokens_per_char": round(per_char, 3), "unknown_tokens": unknown}
    if unknown or per_char > MAX_TOKENS_PER_CHAR[language]:
        name = {"en": "English", "zh": "Chinese"}[language]
        why = "unknown tokens" if unknown else f"{per_char:.2f} tokens per character"
        raise ConfigError(
            f"persona.language: '{language}' needs a model that writes {name}, and the "
            f"tokenizer of "
            f"'{model_ref}' gives {why} on {name} text (it was not trained on it); set model to "
            f"one that writes {name} (e.g. a Qwen2.5 instruct model) or change persona.language"
        )
    return facts
