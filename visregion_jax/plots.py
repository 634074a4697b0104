"""PNG bar charts drawn with PIL, so charts need no plotting library.

`layer_scores_chart` is the one picture pruning and region studies share: a value
per decoder layer, with the visual-region layers and the removed layers in their own
colours and a legend naming them.
"""

import math
import os

from PIL import Image, ImageDraw, ImageFont

PLAIN = (160, 160, 160)
REGION = (52, 101, 164)
REMOVED = (204, 0, 0)
REGION_REMOVED = (117, 80, 123)  # only when a baseline lets region layers be removed
_INK, _GRID, _PAPER = (0, 0, 0), (225, 225, 225), (255, 255, 255)
_LEFT, _RIGHT, _TOP, _BOTTOM, _PLOT_HEIGHT = 72, 24, 64, 48, 300


def _font(size: int):
  return ImageFont.load_default(size=size)


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def _ticks(lo: float, hi: float) -> list:
  """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
  raw = (hi - lo) / 5
  power = 10 ** math.floor(math.log10(raw))
  step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
  first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
  return [round(j * step, 12) for j in range(first, last + 1)]


def bar_chart(path: str, values, colors, *, labels, legend=(), title: str = "", y_label: str = "",
              x_label: str = "", group: int = 1) -> str:
  """One bar per value (None or non-finite: no bar), `legend` = [(colour, text)] in a
  row under the title; returns `path`. Each label sits under `group` consecutive bars,
  so series side by side are values interleaved per group (None leaves a gap)."""
  n = len(values)
  small, large = _font(11), _font(14)
  widest = max((small.getlength(str(t)) for t in labels), default=0)
  slot = max(6, min(40, 900 // max(n, 1)))
  if n * slot < 900:  # room to spare: widen the slots until every label fits
    slot = max(slot, min(120, math.ceil((widest + 8) / group)))
  width = max(480, _LEFT + n * slot + _RIGHT, math.ceil(_LEFT + large.getlength(title) + _RIGHT))
  height = _TOP + _PLOT_HEIGHT + _BOTTOM
  image = Image.new("RGB", (width, height), _PAPER)
  draw = ImageDraw.Draw(image)
  shown = [v for v in values if _finite(v)]
  lo, hi = min(shown + [0.0]), max(shown + [0.0])
  ticks = _ticks(lo, hi if hi > lo else lo + 1.0)
  lo, hi = ticks[0], ticks[-1]

  def y_of(value: float) -> float:
    return _TOP + (hi - value) / (hi - lo) * _PLOT_HEIGHT

  for tick in ticks:
    y = y_of(tick)
    draw.line([(_LEFT, y), (width - _RIGHT, y)], fill=_GRID)
    draw.text((_LEFT - 6, y), f"{tick:g}", fill=_INK, font=small, anchor="rm")
  label_every = max(1, math.ceil(widest / (group * slot - 2)))
  zero = y_of(0.0)
  for i, (value, color) in enumerate(zip(values, colors)):
    x0 = _LEFT + i * slot + max(1, slot // 8)
    x1 = _LEFT + (i + 1) * slot - max(1, slot // 8) - 1
    if _finite(value):
      top, bottom = sorted((y_of(value), zero))
      draw.rectangle([(x0, min(top, bottom - 1)), (x1, bottom)], fill=color)  # a visible sliver for ~0
  for j, label in enumerate(labels):
    if j % label_every == 0:
      center = _LEFT + (j + 0.5) * group * slot
      draw.text((center, _TOP + _PLOT_HEIGHT + 6), str(label), fill=_INK, font=small, anchor="mt")
  draw.line([(_LEFT, zero), (width - _RIGHT, zero)], fill=_INK)
  draw.line([(_LEFT, _TOP), (_LEFT, _TOP + _PLOT_HEIGHT)], fill=_INK)
  draw.text((_LEFT, 8), title, fill=_INK, font=large)
  x = _LEFT
  for color, text in legend:
    draw.rectangle([(x, 36), (x + 12, 48)], fill=color)
    draw.text((x + 18, 42), text, fill=_INK, font=small, anchor="lm")
    x += 18 + draw.textlength(text, font=small) + 16
  if y_label:
    draw.text((8, _TOP - 18), y_label, fill=_INK, font=small)
  draw.text((_LEFT + n * slot / 2, height - 14), x_label, fill=_INK, font=small, anchor="mm")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path, format="PNG")
  return path


def layer_scores_chart(path: str, scores, *, region=(), removed=(), title: str = "Layer scores",
                       y_label: str = "score") -> str:
  """A bar per decoder layer (index i = layer i; None = no score), region and removed
  layers coloured; the legend lists only the kinds that occur."""
  region, removed = set(region), set(removed)
  kinds = {(False, False): (PLAIN, "other layers"), (True, False): (REGION, "visual region"),
           (False, True): (REMOVED, "removed"), (True, True): (REGION_REMOVED, "region, removed")}
  keys = [(i in region, i in removed) for i in range(len(scores))]
  legend = [kinds[key] for key in kinds if key in keys]
  return bar_chart(path, list(scores), [kinds[key][0] for key in keys], labels=list(range(len(scores))),
                   legend=legend, title=title, y_label=y_label, x_label="decoder layer")
