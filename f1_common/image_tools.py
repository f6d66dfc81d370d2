"""Image decoding, resizing, cropping and colour augmentation (PIL + NumPy, uint8 HWC)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> uint8 [H, W, 3]."""
    if not data:
        raise ValueError("empty image bytes (absent camera frames must be masked, not decoded)")
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H,W,C] -> [height,width,C] like torch F.interpolate(mode="bilinear",
    align_corners=False) without antialiasing, which F1/lerobot's resize_with_pad uses."""
    y0, y1, wy = _bilinear_taps(img.shape[0], height)
    x0, x1, wx = _bilinear_taps(img.shape[1], width)
    f = img.astype(np.float32)
    rows = f[y0] * (1 - wy)[:, None, None] + f[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def resize_with_pad(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Aspect-preserving bilinear resize into [height, width], zero padding on the left/top.

    Same placement and interpolation as lerobot/F1 pi0 `resize_with_pad` (pad added before the
    image on both axes, so the image sits bottom-right).
    """
    h, w = img.shape[:2]
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    resized = resize_bilinear(img, new_h, new_w)
    out = np.zeros((height, width, 3), np.uint8)
    out[height - new_h :, width - new_w :] = resized
    return out


def short_side_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) after resizing so that the shorter side is `size` (torchvision Resize(int))."""
    h, w = shape
    if h <= w:
        return size, int(round(size * w / h))
    return int(round(size * h / w)), size


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
    """Lanczos resize so that the shorter side is `size`."""
    new_h, new_w = short_side_shape(img.shape[:2], size)
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.LANCZOS))


def resize_short_side_and_crop(
    img: np.ndarray, size: int, crop: int, origin: tuple[int, int]
) -> np.ndarray:
    """`resize_short_side(img, size)[oy:oy+crop, ox:ox+crop]` computed without resizing the
    pixels that the crop throws away (PIL resamples only the source box of the crop, with the
    same filter scale; equal to resize-then-crop up to +-1 on well under 1% of pixels)."""
    h, w = img.shape[:2]
    new_h, new_w = short_side_shape((h, w), size)
    oy, ox = origin
    if h > w:
        # Pillow 13's box resampling of portrait images disagrees with the full resize in the
        # first output row (measured); portrait cameras are rare, so take the exact path.
        return resize_short_side(img, size)[oy : oy + crop, ox : ox + crop]
    sy, sx = h / new_h, w / new_w
    box = (ox * sx, oy * sy, (ox + crop) * sx, (oy + crop) * sy)
    return np.asarray(Image.fromarray(img).resize((crop, crop), Image.LANCZOS, box=box))


def crop_origin(
    shape: tuple[int, int], crop: int, rng: np.random.Generator | None
) -> tuple[int, int]:
    """Top-left corner of a crop x crop window in an image of `shape` (h, w).

    Random (uniform) if `rng` is given, else centred.
    """
    h, w = shape
    if h < crop or w < crop:
        raise ValueError(f"image {h}x{w} smaller than crop {crop}")
    if rng is None:
        return (h - crop) // 2, (w - crop) // 2
    return int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))


def color_augment(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness: tuple[float, float],
    contrast: tuple[float, float],
    saturation: tuple[float, float],
) -> np.ndarray:
    """Brightness, contrast and saturation factors drawn uniformly, applied in a random order."""
    pil = Image.fromarray(img)
    ops = [
        (ImageEnhance.Brightness, brightness),
        (ImageEnhance.Contrast, contrast),
        (ImageEnhance.Color, saturation),
    ]
    factors = [float(rng.uniform(*r)) for _, r in ops]
    for i in rng.permutation(len(ops)):
        pil = ops[i][0](pil).enhance(factors[i])
    return np.asarray(pil)
