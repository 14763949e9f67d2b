"""Line charts as PNG with Pillow alone (the report's drift curves; no plotting library needed).

`small_multiples(panels, path)`: one panel per title, each a set of labelled series over the same x (window
index, from 1), y in [0, 1]; a legend under the panels names the series by colour.
"""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
PANEL_W, PANEL_H, PAD = 360, 220, 40


def small_multiples(panels: dict, path, y_label: str = "", columns: int = 2) -> Path:
    """panels: {title: {series label: [y per x]}}, the same labels in every panel. Writes and returns path."""
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    rows = -(-len(panels) // columns)
    legend_h = 18 * len(labels) + 10
    image = Image.new("RGB", (columns * PANEL_W, rows * PANEL_H + legend_h), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, (title, series) in enumerate(panels.items()):
        x0, y0 = (i % columns) * PANEL_W, (i // columns) * PANEL_H
        _panel(draw, font, (x0 + PAD, y0 + 24, x0 + PANEL_W - 12, y0 + PANEL_H - 28), title, series, labels, y_label)
    y = rows * PANEL_H + 4
    for j, label in enumerate(labels):
        draw.line((PAD, y + 8 + 18 * j, PAD + 24, y + 8 + 18 * j), fill=COLOURS[j % len(COLOURS)], width=3)
        draw.text((PAD + 32, y + 2 + 18 * j), label, fill="black", font=font)
    path = Path(path)
    image.save(path)
    return path


def _panel(draw, font, box, title, series, labels, y_label):
    left, top, right, bottom = box
    n = max((len(v) for v in series.values()), default=1)
    draw.text((left, top - 18), title, fill="black", font=font)
    draw.rectangle(box, outline=(120, 120, 120))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - tick * (bottom - top)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        draw.text((left - 28, y - 6), f"{tick:.2f}", fill="black", font=font)

    def x_of(k):
        return left + (k + 0.5) * (right - left) / n

    for k in range(n):
        draw.text((x_of(k) - 3, bottom + 4), str(k + 1), fill="black", font=font)
    draw.text((right - 60, bottom + 14), "window", fill="black", font=font)
    if y_label:
        draw.text((left + 4, top + 2), y_label, fill=(90, 90, 90), font=font)
    for label, values in series.items():
        colour = COLOURS[labels.index(label) % len(COLOURS)]
        points = [(x_of(k), bottom - min(max(v, 0.0), 1.0) * (bottom - top)) for k, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
