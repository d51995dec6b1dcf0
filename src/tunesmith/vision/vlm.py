"""Optional written analysis of an inspected image by a vision-language model (seed module 5:
Qwen2-VL; any transformers image-text-to-text model with a chat template works: a hub id or a
local folder).

Fixes against the seed: the answer is decoded from the new tokens only (the seed decoded the
prompt with it), and a 7B VLM is not loaded where it cannot run: on CPU only a local folder is
used, anything else turns the analysis off with one sentence saying what is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.utils.errors import TunesmithError

# The seed's prompt, verbatim (its defect lines: `- class (置信度: 0.87)`).
ANALYSIS_PROMPT = """这是一张产品质检图片，系统已检测到以下缺陷：
{defect_summary}

请详细分析：
1. 每个缺陷的具体特征
2. 可能的产生原因
3. 对产品质量的影响程度
4. 建议的处理方式（返工/降级/报废）"""
MAX_NEW_TOKENS = 512
SEED_MODEL = "Qwen/Qwen2-VL-7B-Instruct"


def analysis_prompt(defects: list[dict]) -> str:
    summary = "\n".join(f"- {d['class']} (置信度: {d['confidence']:.2f})" for d in defects)
    return ANALYSIS_PROMPT.format(defect_summary=summary)


def vlm_unavailable(ref: str | None, cuda: bool | None = None) -> str | None:
    """None when `ref` can be loaded here; else the one sentence saying what is needed."""
    if not ref:
        return None
    if Path(ref).is_dir():
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        return (
            f"VLM analysis is off: '{ref}' is not a local folder, and on CPU tunesmith loads a "
            f"VLM only from one (download one such as {SEED_MODEL} or its 2B sibling where "
            "there is network, then give --vlm PATH)"
        )
    return None


@dataclass
class VlmAnalyzer:
    model: Any
    processor: Any
    max_new_tokens: int = MAX_NEW_TOKENS

    @classmethod
    def load(cls, ref: str, max_new_tokens: int = MAX_NEW_TOKENS) -> VlmAnalyzer:
        """An image-text-to-text model and its processor (the seed: torch_dtype auto,
        device_map auto)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(ref)
            model = AutoModelForImageTextToText.from_pretrained(
                ref, dtype="auto", device_map="auto"
            )
        except (OSError, ValueError) as exc:
            raise TunesmithError(
                f"--vlm: '{ref}' is not an image-text-to-text model transformers can load "
                f"({str(exc).strip().splitlines()[0]})"
            ) from None
        return cls(model.eval(), processor, max_new_tokens)

    def ask(self, image_path: Path, question: str) -> str:
        """The seed's analyze_image: one image, one question, the answer's text."""
        import torch
        from PIL import Image

        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
            }
        ]
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(text=[text], images=[image], return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]  # the answer, not the prompt
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()

    def analyze(self, image_path: Path, defects: list[dict]) -> str:
        """The seed's analyze_with_vlm: the detections in the prompt, the written analysis."""
        return self.ask(image_path, analysis_prompt(defects))
