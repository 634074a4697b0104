"""PNG charts drawn with matplotlib (its Agg backend: no display needed, on pods too).

`layer_scores_chart` is the picture pruning and the region study share: a value per
decoder layer, with the visual-region layers and the removed layers in their own
colours. `bar_chart` and `line_chart` draw the study's estimates with their confidence
intervals as error bars, which is why the charts are matplotlib's: hand-drawn charts
could not show the uncertainty every number of a study carries.
"""

import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

PLAIN = (160, 160, 160)
REGION = (52, 101, 164)
REMOVED = (204, 0, 0)
REGION_REMOVED = (117, 80, 123)  # only when a baseline lets region layers be removed
SERIES = ((52, 101, 164), (204, 0, 0), (78, 154, 6), (245, 121, 0), (117, 80, 123), (143, 89, 2))


def _rgb(color) -> tuple:
  return tuple(c / 255 for c in color)


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def _save(fig, path: str) -> str:
  """Written beside and renamed, so a chart is never seen half-written."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path + ".tmp", format="png", dpi=100)
  plt.close(fig)
  os.replace(path + ".tmp", path)
  return path


def _error_bars(values, intervals) -> list:
  """matplotlib's [below, above] distances from (low, high) intervals (None: no bar)."""
  below, above = [], []
  for value, interval in zip(values, intervals):
    ok = _finite(value) and interval is not None and all(_finite(x) for x in interval)
    below.append(value - interval[0] if ok else 0.0)
    above.append(interval[1] - value if ok else 0.0)
  return [below, above]


def _set_title(ax, fig, title: str) -> None:
  """The title wrapped to the figure's width (~9 characters per inch at matplotlib's
  default size), so that a long one is not cut off at the edges."""
  ax.set_title("\n".join(textwrap.wrap(title, int(9 * fig.get_figwidth()))))


def bar_chart(path: str, values, colors, *, labels, intervals=None, title: str = "", y_label: str = "",
              x_label: str = "") -> str:
  """One bar per value (None or non-finite: no bar), each with its (low, high) interval
  as an error bar when `intervals` is given; returns `path`."""
  fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(values) + 1.5), 4.0))
  shown = [v if _finite(v) else 0.0 for v in values]
  bars = ax.bar(range(len(values)), shown, color=[_rgb(c) for c in colors], antialiased=False,
                yerr=_error_bars(values, intervals) if intervals is not None else None,
                capsize=4, error_kw={"elinewidth": 1.2})
  for bar, value in zip(bars, values):
    bar.set_visible(_finite(value))
  ax.set_xticks(range(len(values)), [str(x) for x in labels])
  ax.set(ylabel=y_label, xlabel=x_label)
  _set_title(ax, fig, title)
  ax.grid(axis="y", color="0.9")
  ax.set_axisbelow(True)
  fig.tight_layout()
  return _save(fig, path)


def line_chart(path: str, x, series: dict, *, title: str = "", y_label: str = "", x_label: str = "") -> str:
  """One line per series name: {"values": [...], "intervals": [(low, high) | None]} over
  `x`, the intervals drawn as error bars; None values leave gaps."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for i, (name, s) in enumerate(series.items()):
    values = [v if _finite(v) else math.nan for v in s["values"]]
    ax.errorbar(x, values, yerr=_error_bars(s["values"], s.get("intervals") or [None] * len(x)), capsize=3,
                marker="o", color=_rgb(SERIES[i % len(SERIES)]), label=name)
  ax.set_xticks(list(x))
  ax.set(ylabel=y_label, xlabel=x_label)
  _set_title(ax, fig, title)
  ax.grid(color="0.9")
  ax.legend()
  fig.tight_layout()
  return _save(fig, path)


def layer_scores_chart(path: str, scores, *, region=(), removed=(), title: str = "Layer scores",
                       y_label: str = "score") -> str:
  """A bar per decoder layer (index i = layer i; None = no score), region and removed
  layers coloured; the legend lists only the kinds that occur."""
  region, removed = set(region), set(removed)
  kinds = {(False, False): (PLAIN, "other layers"), (True, False): (REGION, "visual region"),
           (False, True): (REMOVED, "removed"), (True, True): (REGION_REMOVED, "region, removed")}
  keys = [(i in region, i in removed) for i in range(len(scores))]
  fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(scores) + 2), 4.0))
  shown = [s if _finite(s) else 0.0 for s in scores]
  bars = ax.bar(range(len(scores)), shown, color=[_rgb(kinds[k][0]) for k in keys], antialiased=False)
  for bar, score in zip(bars, scores):
    bar.set_visible(_finite(score))
  for key, (color, text) in kinds.items():
    if key in keys:
      ax.bar([0], [0], color=_rgb(color), label=text)  # a legend entry per kind present
  ax.set_xticks(range(len(scores)), [str(i) for i in range(len(scores))], fontsize=7)
  ax.set(title=title, ylabel=y_label, xlabel="decoder layer")
  ax.title.set_fontsize(9)
  ax.grid(axis="y", color="0.9")
  ax.set_axisbelow(True)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)
