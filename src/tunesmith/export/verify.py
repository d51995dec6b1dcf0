"""Check an export against the model as trained: logits on sample prompts, and the template.

Prompts are rendered with data/render.py, the function training used, so the check runs on
exactly the token sequences the model will see when it is served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tunesmith.data.render import prompt_ids, render_chat
from tunesmith.models.vlm import is_processor, text_tokenizer


def sample_conversations(prompts: list[str]) -> list[list[dict]]:
    """One single-turn conversation per prompt, plus a two-turn one (history in the template)."""
    convs = [[{"role": "user", "content": p}] for p in prompts]
    convs.append(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompts[0]},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": prompts[-1]},
        ]
    )
    return convs


def with_sample_image(conversations: list[list[dict]]) -> list[list[dict]]:
    """The conversations with an image before the first user turn's text (a vision-language
    model's export is checked through its vision tower too): a fixed gradient, no file."""
    from PIL import Image

    image = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    out = []
    for conv in conversations:
        k = next(i for i, m in enumerate(conv) if m["role"] == "user")
        parts = [{"type": "image", "image": image}, {"type": "text", "text": conv[k]["content"]}]
        out.append([*conv[:k], {**conv[k], "content": parts}, *conv[k + 1 :]])
    return out


def _vlm_inputs(processor, conv: list[dict]) -> dict:
    from tunesmith.data.render import encode_with_images
    from tunesmith.models.vlm_engine import split_images

    messages, images = split_images(conv)
    return encode_with_images(processor, messages, images, add_generation_prompt=True)


@torch.inference_mode()
def prompt_logits(model, tokenizer, conversations: list[list[dict]]) -> list[torch.Tensor]:
    """float32 logits over every prompt position, one conversation at a time (no padding);
    a prompt-tuning model's virtual positions in front are left out."""
    out = []
    for conv in conversations:
        if is_processor(tokenizer):  # a vision-language model: its images through the processor
            inputs = {k: v.to(model.device) for k, v in _vlm_inputs(tokenizer, conv).items()}
            out.append(model(**inputs).logits[0].float().cpu())
            continue
        ids = torch.tensor([prompt_ids(tokenizer, conv)], device=model.device)
        out.append(model(input_ids=ids).logits[0, -ids.shape[1] :].float().cpu())
    return out


@dataclass
class Verification:
    max_abs_diff: float  # between the export and the model as trained
    tolerance: float
    adapter_effect: float | None  # max |adapter - base| logits: 0 means the adapter does nothing
    same_argmax: bool  # greedy next tokens agree at every position
    template_identical: bool
    eos_ok: bool  # generation_config stops on the chat turn's end token
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(
    reference: list[torch.Tensor],
    exported: list[torch.Tensor],
    tolerance: float,
    base: list[torch.Tensor] | None = None,
) -> tuple[float, bool, float | None]:
    """(max |difference|, argmax agreement, adapter effect) over all prompts."""
    diff = max(float((r - e).abs().max()) for r, e in zip(reference, exported, strict=True))
    same = all(
        torch.equal(r.argmax(-1), e.argmax(-1)) for r, e in zip(reference, exported, strict=True)
    )
    effect = (
        max(float((r - b).abs().max()) for r, b in zip(reference, base, strict=True))
        if base is not None
        else None
    )
    return diff, same, effect


def default_tolerance(dtype: str, reference: list[torch.Tensor]) -> float:
    """1e-3 in float32; 5% of the largest logit where the weights were rounded to 16 bits."""
    if dtype == "float32":
        return 1e-3
    return 0.05 * max(1.0, max(float(r.abs().max()) for r in reference))


def template_identical(trained_tok, exported_tok, conversations: list[list[dict]]) -> bool:
    """Both tokenizers render and tokenize every conversation (prompt and full) identically."""
    for conv in conversations:
        full = [*conv, {"role": "assistant", "content": "Fine."}]
        for messages, gen in ((conv, True), (full, False)):
            if render_chat(trained_tok, messages, gen) != render_chat(exported_tok, messages, gen):
                return False
        if _ids(trained_tok, conv) != _ids(exported_tok, conv):
            return False
    return True


def _ids(tokenizer, conv: list[dict]) -> list[int]:
    if is_processor(tokenizer):
        return _vlm_inputs(tokenizer, conv)["input_ids"][0].tolist()
    return prompt_ids(tokenizer, conv)


def eos_ok(generation_config, tokenizer) -> bool:
    """A server stops where the chat turn ends only if that token is an end token of the model."""
    eos = generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    tokenizer = text_tokenizer(tokenizer)  # a processor's own
    return tokenizer.eos_token_id in eos and generation_config.pad_token_id is not None


def verify(
    reference: list[torch.Tensor],
    exported: list[torch.Tensor],
    tolerance: float,
    same_template: bool,
    eos_fine: bool,
    base: list[torch.Tensor] | None = None,
) -> Verification:
    diff, same, effect = compare(reference, exported, tolerance, base)
    problems = []
    if not diff <= tolerance:  # also catches NaN
        problems.append(
            f"the exported model's logits differ from the trained model's by {diff:.3g} "
            f"(tolerance {tolerance:.3g})"
        )
    if not same_template:
        problems.append("the exported chat template renders differently from the trained one")
    if not eos_fine:
        problems.append("generation_config.eos_token_id lacks the tokenizer's end-of-turn token")
    return Verification(diff, tolerance, effect, same, same_template, eos_fine, problems)
