"""Images in Ollama requests are decoded and checked before they reach a backend."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class ImageError(ValueError):
    """A 400: the message says which image and why."""


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 4
    max_bytes: int = 10 * 1024 * 1024
    max_side: int = 4096


def images_of(path: str, body: dict) -> list:
    if path == "/api/generate":
        return list(body.get("images") or [])
    if path == "/api/chat":
        return [image for message in body.get("messages") or [] if isinstance(message, dict)
                for image in message.get("images") or []]
    return []


def check_images(images: list, limits: ImageLimits) -> list[str]:
    """Every image decoded and checked; their formats (PNG, JPEG, ...) in order."""
    if len(images) > limits.max_images:
        raise ImageError(f"{len(images)} images in one request; the limit is "
                         f"{limits.max_images}")
    formats = []
    for number, encoded in enumerate(images, 1):
        if not isinstance(encoded, str):
            raise ImageError(f"image {number} must be a base64 string")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"image {number} is not valid base64") from None
        if len(data) > limits.max_bytes:
            raise ImageError(f"image {number} has {len(data)} bytes; the limit is "
                             f"{limits.max_bytes}")
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageError(f"image {number} is not a readable image "
                             f"(expected one of {', '.join(sorted(FORMATS))})") from None
        if kind not in FORMATS:
            raise ImageError(f"image {number} is {kind}; accepted: {', '.join(sorted(FORMATS))}")
        if max(width, height) > limits.max_side:
            raise ImageError(f"image {number} is {width}x{height}; the longest side may be "
                             f"{limits.max_side} pixels")
        formats.append(kind)
    return formats
