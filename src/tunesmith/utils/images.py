"""Opening an image named by a path, a `data:` URL or given as a PIL image (training data,
chat, evaluation and serving all open images here). Pillow is imported on first use."""

from __future__ import annotations

import base64
import binascii
import io


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 `data:` URL; ValueError with the reason otherwise."""
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not payload:
        raise ValueError("an image data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an image data: URL holds invalid base64") from None


def open_image(ref: str):
    """PIL's lazy image of a path or a data: URL (nothing decoded past the header yet)."""
    from PIL import Image

    if ref.startswith("data:"):
        return Image.open(io.BytesIO(decode_data_url(ref)))
    return Image.open(ref)


def load_image(ref):
    """An RGB PIL image from a path, a data: URL or a PIL image."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    with open_image(str(ref)) as image:
        return image.convert("RGB")
