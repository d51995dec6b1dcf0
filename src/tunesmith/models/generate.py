"""Text generation for chat, quickstart and evaluation; prompts come from render.prompt_ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.render import prompt_ids


@dataclass
class Reply:
    text: str
    finished: bool  # False when max_new_tokens cut the reply short


@torch.inference_mode()
def generate_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    batch_size: int = 8,
    streamer=None,
) -> list[Reply]:
    """One reply per conversation (each ends with a user turn). Greedy when temperature == 0."""
    replies: list[Reply] = []
    for start in range(0, len(conversations), batch_size):
        batch = [prompt_ids(tokenizer, conv) for conv in conversations[start : start + batch_size]]
        input_ids, attention_mask = _left_pad(batch, tokenizer.pad_token_id)
        sampling = (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False}
        )
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
            **sampling,
        )
        new_tokens = output[:, input_ids.shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        # A reply stopped on an end token when its row ends in that token or in padding.
        stops = torch.tensor([tokenizer.pad_token_id, tokenizer.eos_token_id])
        finished = torch.isin(new_tokens[:, -1], stops) | (new_tokens.shape[1] < max_new_tokens)
        replies += [Reply(t.strip(), bool(f)) for t, f in zip(texts, finished, strict=True)]
    return replies


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding keeps every prompt's last token at the same position, where generation starts.
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask
