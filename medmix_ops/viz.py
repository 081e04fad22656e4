"""Small PNG helpers: labelled image grids for previews (Pillow only, no display needed)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ._io import atomic_path


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """[H, W], [1, H, W] or [3, H, W] tensor (float in [0, 1] or uint8) -> HxWx3 uint8 array."""
    x = x.detach().cpu()
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)
    elif x.dim() == 2:
        x = x[..., None]
    else:
        raise ValueError(f"to_uint8_image: expected [H, W], [1, H, W] or [3, H, W], got {list(x.shape)}")
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, 3)
    return x.contiguous().numpy()


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: str, col_labels: Sequence[str] = (),
              row_labels: Sequence[str] = (), pad: int = 4,
              captions: Sequence[Sequence[str]] = ()) -> str:
    """Writes a grid of equally sized images with optional column labels, row labels (under
    each row's first cell) and per-cell captions (under each cell); returns path. The file is
    written to a temporary name first and renamed, so it is never half written."""
    cells = [[to_uint8_image(img) for img in row] for row in rows]
    h, w = cells[0][0].shape[:2]
    label_h = 14 if col_labels else 0
    ncols = max(len(r) for r in cells)
    cap_lines = max((len(c.split("\n")) for row in captions for c in row), default=0)
    cell_h = h + (12 if row_labels else 0) + 11 * cap_lines
    # light grey background: white cells (e.g. weight maps of 1) keep a visible edge
    canvas = Image.new("RGB", (ncols * (w + pad) + pad, label_h + len(cells) * (cell_h + pad) + pad),
                       (225, 225, 225))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(col_labels):
        draw.text((pad + j * (w + pad), 1), str(text), fill=(0, 0, 0))
    for i, row in enumerate(cells):
        y = label_h + pad + i * (cell_h + pad)
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (pad + j * (w + pad), y))
        if i < len(row_labels):
            draw.text((pad, y + h), str(row_labels[i]), fill=(0, 0, 0))
        if i < len(captions):
            top = y + h + (12 if row_labels else 0)
            for j, text in enumerate(captions[i]):
                draw.multiline_text((pad + j * (w + pad), top), str(text), fill=(0, 0, 0), spacing=1)
    with atomic_path(path) as tmp:
        canvas.save(tmp)
    return path
