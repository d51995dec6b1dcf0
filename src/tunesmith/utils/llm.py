"""The LLM interface the data tools, the judge and distillation talk to, below data/ and models/.

A `ChatClient` takes whole conversations and returns one reply each. The data tools (augment,
synth, preference building) and the evaluation judge take a client object and never build one:
`tunesmith.models.client` holds the implementations (a local model, any OpenAI-compatible
endpoint); `tunesmith.runs.inference.make_client` builds one from a spec for the CLI and the
jobs. Keeping the contract here lets data/ stay free of models/ (which imports data/render).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class Reply:
    text: str
    finished: bool  # False when max_new_tokens cut the reply short


@runtime_checkable
class ChatClient(Protocol):
    def chat(
        self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.7
    ) -> list[str]:
        """One reply text per conversation (each ends with a user turn), in order."""
        ...


def replies_of(
    client: ChatClient, conversations: list[list[dict]], max_new_tokens: int, temperature: float
) -> list[Reply]:
    """Replies with their finished flag; a client with only `chat` counts every reply finished."""
    if hasattr(client, "replies"):
        return client.replies(conversations, max_new_tokens, temperature)
    texts = client.chat(conversations, max_new_tokens=max_new_tokens, temperature=temperature)
    return [Reply(text, True) for text in texts]
