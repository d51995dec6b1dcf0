"""Text generation for chat, quickstart and evaluation; prompts come from render.prompt_ids."""

from __future__ import annotations

import torch

from tunesmith.data.render import prompt_ids


@torch.inference_mode()
def generate_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    batch_size: int = 8,
    streamer=None,
) -> list[str]:
    """One reply per conversation (each ends with a user turn). Greedy when temperature == 0."""
    replies: list[str] = []
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
        replies += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
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
