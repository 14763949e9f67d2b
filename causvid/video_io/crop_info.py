"""Causal-Forcing's I2V crop schema: ``target_crop_info_*.json`` read and checked."""
from __future__ import annotations

import math
import os
from typing import Any

from causvid.jsonfile import load_json
from causvid.video_io.errors import CropInfoError


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_crop_info(json_path: str | os.PathLike) -> dict[str, dict]:
    """Parse a Causal-Forcing ``target_crop_info_*.json``.

    The file is a JSON list of entries like::

        {"file_name": "0001.jpg", "caption": "...", "type": "...",
         "origin_width": 1280, "origin_height": 720,
         "target_crop": {"target_bbox": [x0, y0, x1, y1]}}

    Returns ``{file_name: {"caption": str, "bbox": (x0, y0, x1, y1), "type":
    ..., "origin_width": int | None, "origin_height": int | None}}`` with
    ``bbox`` in integer pixels of the original image (``x1``/``y1``
    exclusive), ready for ``load_image(..., crop=bbox)``.

    A bbox whose four values are all within ``[0, 1]`` is taken as fractions of
    ``origin_width`` / ``origin_height`` (which are then required); otherwise
    it is in pixels.  (So a pixel box ``[0, 0, 1, 1]`` can't be expressed; it
    would be a 1-pixel crop anyway.)  ``file_name``, ``caption`` and
    ``target_crop.target_bbox`` are required; ``type`` is optional.  Problems
    raise :class:`CropInfoError` naming the file (and the entry).
    """
    name = os.fspath(json_path)
    data = load_json(name, "crop info", CropInfoError)
    if not isinstance(data, list):
        raise CropInfoError(f"crop info {name!r}: expected a JSON list of entries, got {type(data).__name__}")

    out: dict[str, dict] = {}
    for i, entry in enumerate(data):
        where = f"crop info {name!r}, entry {i}"
        if not isinstance(entry, dict):
            raise CropInfoError(f"{where}: expected an object, got {type(entry).__name__}")
        fname = entry.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise CropInfoError(f"{where}: missing or invalid 'file_name'")
        where += f" ({fname!r})"
        if fname in out:
            raise CropInfoError(f"{where}: duplicate file_name")
        caption = entry.get("caption")
        if not isinstance(caption, str):
            raise CropInfoError(f"{where}: missing or invalid 'caption'")
        target = entry.get("target_crop")
        if not isinstance(target, dict) or "target_bbox" not in target:
            raise CropInfoError(f"{where}: missing 'target_crop.target_bbox'")
        bbox = target["target_bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise CropInfoError(f"{where}: 'target_bbox' must be 4 numbers [x0, y0, x1, y1], got {bbox!r}")

        dims = []
        for key in ("origin_width", "origin_height"):
            v = entry.get(key)
            if v is not None and (not _is_number(v) or v <= 0):
                raise CropInfoError(f"{where}: invalid {key!r} {v!r}")
            dims.append(None if v is None else int(round(v)))
        ow, oh = dims

        x0, y0, x1, y1 = (float(v) for v in bbox)
        if all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            if ow is None or oh is None:
                raise CropInfoError(
                    f"{where}: normalised 'target_bbox' {list(bbox)} needs 'origin_width' and 'origin_height'"
                )
            x0, x1, y0, y1 = x0 * ow, x1 * ow, y0 * oh, y1 * oh
        px = tuple(int(round(v)) for v in (x0, y0, x1, y1))
        if px[0] < 0 or px[1] < 0 or px[2] <= px[0] or px[3] <= px[1]:
            raise CropInfoError(f"{where}: 'target_bbox' {list(bbox)} is empty or negative")
        if (ow is not None and px[2] > ow) or (oh is not None and px[3] > oh):
            raise CropInfoError(f"{where}: 'target_bbox' {list(bbox)} exceeds the {ow}x{oh} original image")
        out[fname] = {
            "caption": caption,
            "bbox": px,
            "type": entry.get("type"),
            "origin_width": ow,
            "origin_height": oh,
        }
    return out
