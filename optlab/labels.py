"""Point labels that do not overlap: choose, for each labelled point of a scatter chart, the side of
its marker where the text collides with no other label and no other marker, at every chart width
the pages draw it at. Pure geometry, no Plotly: the chart builders call `place`, and
`overlaps(fig, width)` counts collisions in a finished figure the same way (tests use it).

Plotly places a label beside its marker (textposition) in pixels, so whether two labels collide
depends on the pixel size of the plot area: the axis ranges must be fixed (the builders set them)
and the width, which Streamlit gives the chart, is tried over the range the pages use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Tried in this order: above and below read best, then the sides, then the corners.
POSITIONS = ("top center", "bottom center", "middle right", "middle left",
             "top right", "top left", "bottom right", "bottom left")
# (figure width, pixels the plot area may lose to a legend or axis labels Plotly makes room for)
# to be safe at: a full-width chart is 564 px wide at a 1024 px window with the sidebar open, up to
# 1100 px on a wide screen; a legend below the plot takes up to about 120 px of its height.
SIZES = ((540, 0), (540, 120), (800, 0), (800, 120), (1100, 0), (1100, 120))
CHAR_WIDTH = 0.6     # a character's width as a share of the font size (Plotly's default sans font)
LINE_HEIGHT = 1.25
GAP = 3              # pixels between a marker's edge and its label
# Clearance kept around a label when choosing its side: CHAR_WIDTH is an average, and a browser's
# glyphs for a given name can run a few pixels wider (seen: one overlap in the browser test, under load)
CLEARANCE = 4


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def hits(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def grown(self, by: float) -> "Box":
        return Box(self.x0 - by, self.y0 - by, self.x1 + by, self.y1 + by)

    def inside(self, width: float, height: float) -> bool:
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height


@dataclass(frozen=True)
class Frame:
    """The plot area: axis ranges, the figure's height and margins (pixels)."""
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    height: float
    margin: tuple[float, float, float, float]   # left, right, top, bottom

    def size(self, width: float, squeeze: float = 0) -> tuple[float, float]:
        left, right, top, bottom = self.margin
        return max(1.0, width - left - right), max(1.0, self.height - top - bottom - squeeze)

    def pixel(self, x: float, y: float, width: float, squeeze: float = 0) -> tuple[float, float]:
        """(px from the plot's left, px from the plot's top) of a data point."""
        w, h = self.size(width, squeeze)
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (x - x0) / ((x1 - x0) or 1) * w, (y1 - y) / ((y1 - y0) or 1) * h


def text_box(px: float, py: float, radius: float, text: str, position: str, font_size: float) -> Box:
    """The box a label takes when Plotly draws it at `position` beside a marker of `radius` px."""
    w = len(text) * CHAR_WIDTH * font_size
    h = LINE_HEIGHT * font_size
    vertical, horizontal = position.split()
    off = radius + GAP
    if horizontal == "center":
        x0 = px - w / 2
    elif horizontal == "right":
        x0 = px + (off if vertical == "middle" else 0)
    else:
        x0 = px - w - (off if vertical == "middle" else 0)
    if vertical == "top":
        y0 = py - off - h
    elif vertical == "bottom":
        y0 = py + off
    else:
        y0 = py - h / 2
    return Box(x0, y0, x0 + w, y0 + h)


def _marker_box(px: float, py: float, radius: float) -> Box:
    return Box(px - radius, py - radius, px + radius, py + radius)


def place(xs: list[float], ys: list[float], radii: list[float], texts: list[str], frame: Frame, *,
          font_size: float, sizes=SIZES) -> list[str | None]:
    """A textposition for each point, or None where no side is free at every size in `sizes`
    (that label is better left to the hover than drawn over another). Points are placed from
    the top of the chart down, so crowded clusters keep their upper labels."""
    order = sorted(range(len(xs)), key=lambda i: (-ys[i], xs[i]))
    pixels = {size: [frame.pixel(x, y, *size) for x, y in zip(xs, ys)] for size in sizes}
    taken: dict[tuple, list[Box]] = {size: [] for size in sizes}
    chosen: list[str | None] = [None] * len(xs)
    for i in order:
        if not texts[i]:
            continue
        for position in POSITIONS:
            boxes = {size: text_box(*pixels[size][i], radii[i], texts[i], position, font_size) for size in sizes}
            if all(_free(boxes[size], i, pixels[size], radii, taken[size], frame.size(*size)) for size in sizes):
                chosen[i] = position
                for size in sizes:
                    taken[size].append(boxes[size])
                break
    return chosen


def _free(box: Box, i: int, pixels, radii, taken: list[Box], area: tuple[float, float]) -> bool:
    if not box.inside(*area) or any(box.grown(CLEARANCE).hits(other) for other in taken):
        return False
    return not any(j != i and box.hits(_marker_box(px, py, radii[j])) for j, (px, py) in enumerate(pixels))


def wrap(text: str, width: int = 14, lines: int = 3) -> str:
    """A category label broken into lines of about `width` characters (at most `lines`, the last
    one cut with '…'), joined with Plotly's <br>: bar labels that stay level instead of turning."""
    out: list[str] = []
    for word in str(text).split():
        if out and len(out[-1]) + 1 + len(word) <= width:
            out[-1] += " " + word
        else:
            out.append(word)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:width - 1] + "…"
    return "<br>".join(out)


def padded_range(values: list[float], share: float = 0.15, *, from_zero: bool = False,
                 least: float = 1.0) -> tuple[float, float]:
    """An axis range around `values` with `share` of the span (at least `least`) free at each end,
    room for the labels of the outermost points."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = max(high - low, least if not from_zero else 0.0, abs(high) * 0.1 if from_zero else 0.0) or 1.0
    return (0.0 if from_zero else low - share * span, high + share * span)


# -- reading a finished figure back ---------------------------------------------------------------------
def marker_radius(size, sizemode: str | None, sizeref: float | None, sizemin: float | None) -> float:
    """The radius in pixels Plotly draws a marker of `size` with: plotly.js (makeBubbleSizeFn) takes
    half the size through the size mode, sqrt(size / 2 / sizeref) for "area", size / 2 / sizeref
    for "diameter", and sizemin bounds that radius. (Taking the square root first and halving after
    gave bubbles 1/sqrt(2) of their drawn size: labels were placed over neighbours' bubbles.)"""
    size = float(size or 0)
    if sizemode == "area":
        radius = math.sqrt(size / 2 / (sizeref or 1)) if size > 0 else 0.0
    else:
        radius = size / 2 / (sizeref or 1)
    return max(radius, sizemin or 0)


def frame_of(fig) -> Frame:
    layout = fig.layout
    m = layout.margin
    return Frame(tuple(layout.xaxis.range), tuple(layout.yaxis.range), layout.height,
                 (m.l, m.r, m.t, m.b))


def drawn_points(fig) -> list[tuple[float, float, float, str, str]]:
    """(x, y, marker radius px, text, textposition) of every marker of the figure's labelled
    scatter traces; text is '' where a point has no label."""
    points = []
    for trace in fig.data:
        if trace.type != "scatter" or "text" not in (trace.mode or ""):
            continue
        n = len(trace.x)
        texts = list(trace.text) if isinstance(trace.text, (list, tuple)) else [trace.text or ""] * n
        positions = (list(trace.textposition) if isinstance(trace.textposition, (list, tuple))
                     else [trace.textposition or "middle center"] * n)
        sizes = (list(trace.marker.size) if isinstance(trace.marker.size, (list, tuple))
                 else [trace.marker.size or 6] * n)
        for x, y, text, position, size in zip(trace.x, trace.y, texts, positions, sizes):
            radius = marker_radius(size, trace.marker.sizemode, trace.marker.sizeref, trace.marker.sizemin)
            points.append((x, y, radius, text or "", position))
    return points


def overlaps(fig, width: float, squeeze: float = 0) -> int:
    """How many times a drawn label collides with another label or covers another point's marker
    when the figure is drawn `width` pixels wide (its plot area `squeeze` px shorter than the
    margins leave); a label reaching outside the plot area counts too."""
    frame = frame_of(fig)
    font = fig.layout.font.size or 12
    points = drawn_points(fig)
    pixels = [frame.pixel(x, y, width, squeeze) for x, y, *_ in points]
    boxes = {a: text_box(px, py, r, text, pos, font)
             for a, ((px, py), (_, _, r, text, pos)) in enumerate(zip(pixels, points)) if text}
    labelled = sorted(boxes)
    count = sum(1 for n, a in enumerate(labelled) for b in labelled[n + 1:] if boxes[a].hits(boxes[b]))
    count += sum(1 for a in labelled for b, (px, py) in enumerate(pixels)
                 if a != b and boxes[a].hits(_marker_box(px, py, points[b][2])))
    return count + sum(1 for a in labelled if not boxes[a].inside(*frame.size(width, squeeze)))


def apply(fig, *, shorter=None, sizes=SIZES) -> int:
    """Place every label of the figure's labelled scatter traces (see `place`) and write the
    chosen positions into the traces. A label with no free side is tried again as `shorter(text)`
    (when given), then blanked. The figure's axis ranges, height and margins must be set. Returns
    how many labels were blanked; names must stay in the hover (hovertext or customdata, not
    %{text})."""
    frame = frame_of(fig)
    font = fig.layout.font.size or 12
    traces = [t for t in fig.data if t.type == "scatter" and "text" in (t.mode or "")]
    points = drawn_points(fig)
    texts = [p[3] for p in points]
    for attempt in range(2 if shorter else 1):
        positions = place([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                          texts, frame, font_size=font, sizes=sizes)
        if all(p or not t for p, t in zip(positions, texts)) or not shorter:
            break
        texts = [t if p else shorter(t) for p, t in zip(positions, texts)]
    points = [(*p[:3], t, *p[4:]) for p, t in zip(points, texts)]
    start, blanked = 0, 0
    for trace in traces:
        n = len(trace.x)
        mine, texts = positions[start:start + n], [p[3] for p in points[start:start + n]]
        trace.textposition = [p or "middle center" for p in mine]
        trace.text = [t if p else "" for t, p in zip(texts, mine)]
        blanked += sum(1 for t, p in zip(texts, mine) if t and not p)
        start += n
    return blanked
