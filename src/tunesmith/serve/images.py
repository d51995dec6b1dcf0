"""Image inputs of /v1/chat/completions: OpenAI's `image_url` content parts, checked and opened.

Accepted: `data:image/...;base64,...` URLs, and paths (or `file://` URLs) of files inside
serve.image_dir. Refused with a sentence: http(s) URLs (the server fetches nothing: it runs
offline), paths when serve.image_dir is unset or outside it, more than serve.max_images
images, a file or decoded data: URL larger than serve.max_image_bytes, an image of more than
serve.max_image_pixels (checked from the header, before any pixel is decoded), and what
Pillow cannot read. Each error is a 400 naming the part (`messages.I.content.J`).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from tunesmith.config.serve import ServeConfig
from tunesmith.serve.protocol import APIError


def has_images(conversation: list[dict]) -> bool:
    return any(
        isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
        for m in conversation
    )


def open_images(conversation: list[dict], cfg: ServeConfig) -> list[dict]:
    """The conversation with each image_url part replaced by `{"type": "image", "image": PIL}`."""
    count = 0
    opened = []
    for i, message in enumerate(conversation):
        content = message["content"]
        if not isinstance(content, list):
            opened.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            if part.get("type") != "image_url":
                parts.append(part)
                continue
            count += 1
            param = f"messages.{i}.content.{j}.image_url"
            if count > cfg.max_images:
                raise _bad(param, f"at most {cfg.max_images} images per request (serve.max_images)")
            parts.append({"type": "image", "image": _open(part["url"], cfg, param)})
        opened.append({**message, "content": parts})
    return opened


def _bad(param: str, message: str, code: str = "invalid_image") -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


def _open(url: str, cfg: ServeConfig, param: str):
    from PIL import Image

    if url.startswith(("http://", "https://")):
        raise _bad(
            param,
            "remote image URLs are not fetched (the server runs offline); send the image as a "
            "data: URL" + (" or a file under serve.image_dir" if cfg.image_dir else ""),
            "image_url_not_allowed",
        )
    data = _data_url(url, cfg, param) if url.startswith("data:") else _file(url, cfg, param)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > cfg.max_image_pixels:
            raise _bad(
                param,
                f"the image is {width} x {height} pixels; at most {cfg.max_image_pixels} "
                "(serve.max_image_pixels)",
            )
        return image.convert("RGB")
    except APIError:
        raise
    except Exception as exc:
        raise _bad(param, f"not a readable image ({type(exc).__name__})") from None


def _data_url(url: str, cfg: ServeConfig, param: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not payload:
        raise _bad(param, "a data: URL must be base64 encoded (data:image/png;base64,...)")
    if len(payload) * 3 // 4 > cfg.max_image_bytes:
        raise _too_big(param, cfg)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(param, "the data: URL holds invalid base64") from None


def _file(url: str, cfg: ServeConfig, param: str) -> bytes:
    if not cfg.image_dir:
        raise _bad(
            param,
            "image paths are not accepted (serve.image_dir is not set); send a data: URL",
            "image_url_not_allowed",
        )
    root = Path(cfg.image_dir).resolve()
    path = (root / url.removeprefix("file://")).resolve()
    if not path.is_relative_to(root):
        raise _bad(param, "the path is outside serve.image_dir", "image_url_not_allowed")
    if not path.is_file():
        raise _bad(param, f"no image file '{url}' in serve.image_dir")
    if path.stat().st_size > cfg.max_image_bytes:
        raise _too_big(param, cfg)
    return path.read_bytes()


def _too_big(param: str, cfg: ServeConfig) -> APIError:
    return _bad(
        param, f"the image is larger than {cfg.max_image_bytes} bytes (serve.max_image_bytes)"
    )
