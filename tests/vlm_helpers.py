"""Tiny random vision-language models built in-process, each a local folder with its processor:
a Qwen2-VL (images of any size, M-RoPE, the merger inside the vision tower), a LLaVA (CLIP
tower, a fixed image size, a projector beside it) and an Idefics3 / SmolVLM (images split into
tiles, a connector). Three architectures, so the generic path (models/vlm.py,
data/multimodal.py) is checked against each."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import build_tiny_tokenizer

# transformers' processor convention: content is a list of parts; an image part renders as the
# model's placeholder, which its processor expands into the image's tokens
_PARTS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ IMAGE }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_TEMPLATE = _PARTS.replace("IMAGE", repr(QWEN_IMAGE))
LLAVA_TEMPLATE = _PARTS.replace("IMAGE", repr("<image>"))
ARCHITECTURES = ("qwen2_vl", "llava", "idefics3")


def _text_config(vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


def build_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = build_tiny_tokenizer()
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    ids = dict(zip(special, tokenizer.convert_tokens_to_ids(special), strict=True))
    # 28-pixel patches merged 2x2: an image of w x h pixels (clamped to these pixel counts)
    # is about (w / 28) x (h / 28) tokens
    images = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )
    text = _text_config(len(tokenizer)) | {
        "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(Qwen2VLForConditionalGeneration(config), processor, tokenizer, folder)


def build_llava(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    # every image resized and cropped to 28 x 28: 16 patches of 7 pixels, 16 image tokens
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            **_text_config(len(tokenizer)),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(config), processor, tokenizer, folder)


def _save(model, processor, tokenizer, folder: Path) -> Path:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_idefics3(folder: Path, seed: int = 0) -> Path:
    """SmolVLM's architecture: SigLIP-style tower, a pixel-shuffle connector, images split into
    tiles, each tile and the whole image as <image> runs between <fake_token_around_image>."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    tokenizer = build_tiny_tokenizer()
    tiles = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    special = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tokenizer.add_special_tokens({"additional_special_tokens": [*special, *tiles]})
    # tiles of 28 pixels (4 tokens each after the 2x pixel shuffle), images up to 56 pixels
    images = Idefics3ImageProcessor(
        size={"longest_edge": 56}, max_image_size={"longest_edge": 28}, do_image_splitting=True
    )
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=4, chat_template=LLAVA_TEMPLATE
    )
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
        ),
        text_config=LlamaConfig(
            **_text_config(len(tokenizer)),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    torch.manual_seed(seed)
    return _save(Idefics3ForConditionalGeneration(config), processor, tokenizer, folder)


BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava": build_llava, "idefics3": build_idefics3}


def write_images(folder: Path) -> dict[str, Path]:
    """Four small images of different sizes and colours (a colour per answer)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"red": (56, 56), "green": (84, 56), "blue": (56, 112), "white": (112, 84)}
    colours = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 220)}
    colours["white"] = (250, 250, 250)
    paths = {}
    for name, size in shapes.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", size, colours[name]).save(paths[name])
    return paths


def write_colour_data(folder: Path) -> Path:
    """LLaMA-Factory multimodal records (`<image>` + `images`, paths relative to the file): the
    answer is the colour of the image, which only the image tells."""
    paths = write_images(folder / "media")
    records = [
        {
            "messages": [
                {"role": "user", "content": "<image>What colour is this?"},
                {"role": "assistant", "content": f"It is {name}."},
            ],
            "images": [f"media/{path.name}"],
        }
        for name, path in paths.items()
    ]
    out = folder / "colours.json"
    out.write_text(json.dumps(records * 2, indent=1), encoding="utf-8")
    return out
