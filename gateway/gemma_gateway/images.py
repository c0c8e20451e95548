"""Images in Ollama requests are decoded and checked before they reach a backend."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}
# Pillow refuses (DecompressionBombError) an image claiming more pixels than twice this.
Image.MAX_IMAGE_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """A 400: the message says which image and why."""


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 4
    max_bytes: int = 10 * 1024 * 1024
    max_side: int = 4096


def check_images(images: list, limits: ImageLimits) -> list[str]:
    """Every image (base64, as Ollama takes them) decoded and checked; their formats."""
    if len(images) > limits.max_images:
        raise ImageError(f"{len(images)} images in one request; the limit is "
                         f"{limits.max_images}")
    formats = []
    for number, encoded in enumerate(images, 1):
        if not isinstance(encoded, str):
            raise ImageError(f"image {number} must be a base64 string")
        # Go's base64 decoding (for Ollama's []byte fields) skips CR and LF.
        encoded = encoded.replace("\r", "").replace("\n", "")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"image {number} is not valid base64") from None
        formats.append(check_image(number, data, limits))
    return formats


def check_data_urls(urls: list[str], limits: ImageLimits) -> list[str]:
    """OpenAI-style image URLs: data: URIs only (a closed network fetches nothing)."""
    images = []
    for number, url in enumerate(urls, 1):
        head, comma, data = url.partition(",")
        if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
            raise ImageError(f"image {number}: only data:image/...;base64, URLs are taken "
                             "(nothing is fetched from a closed network)")
        images.append(data)
    return check_images(images, limits)


def check_image(number: int, data: bytes, limits: ImageLimits) -> str:
    if len(data) > limits.max_bytes:
        raise ImageError(f"image {number} has {len(data)} bytes; the limit is "
                         f"{limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            if max(width, height) <= limits.max_side:
                image.verify()
    except Image.DecompressionBombError:
        raise ImageError(f"image {number} decompresses to more pixels than any accepted "
                         "image has") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"image {number} is not a readable image "
                         f"(expected one of {', '.join(sorted(FORMATS))})") from None
    if max(width, height) > limits.max_side:
        raise ImageError(f"image {number} is {width}x{height}; the longest side may be "
                         f"{limits.max_side} pixels")
    if kind not in FORMATS:
        raise ImageError(f"image {number} is {kind}; accepted: {', '.join(sorted(FORMATS))}")
    return kind
