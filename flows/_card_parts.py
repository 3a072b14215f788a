"""Building blocks of the cards (``flows/_cards.py``): readable numbers, tables that fit a 1200-px page,
charts that say "all zero" or "no data" in words instead of drawing empty axes, the metric glossary, and
the live training card that refreshes while ``train`` runs.

Metaflow's card lays a table out at its natural width inside a column of about 800 px; a table wider
than that is clipped on a 1200-px screen. So tables are cut into column groups of at most
:data:`MAX_COLUMNS` (the key column repeated) and long cell text is shortened with the full length noted.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from metaflow.cards import Image, Markdown, ProgressBar, Table

MAX_COLUMNS = 6  # columns per table, the key column included: fits the card's column at 1200 px
MAX_CELL = 160  # characters per cell before the text is shortened
BREAK_EVERY = 24  # a word longer than this gets break opportunities (URLs, long ids)


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def fmt(v: Any, digits: int = 4) -> str:
    """A cell: floats to ``digits`` significant digits, NaN as "n/a", long text shortened and breakable."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}g}"
    s = str(v)
    if len(s) > MAX_CELL:
        s = s[: MAX_CELL - 1] + f"… ({len(s)} characters)"
    return " ".join(w if len(w) <= BREAK_EVERY else "\u200b".join(w[i:i + BREAK_EVERY] for i in
                                                                   range(0, len(w), BREAK_EVERY)) for w in s.split(" "))


def tables(df: pd.DataFrame, key: str | None = None, digits: int = 4, max_rows: int = 200,
           cells: Mapping[str, Any] | None = None) -> list:
    """``df`` as one or more tables of at most :data:`MAX_COLUMNS` columns each (``key``, default the first
    column, repeated in every one). ``cells[column](value, row)`` may format a column's cells itself."""
    df = df.head(max_rows)
    if df.shape[1] == 0:
        return [Markdown("_(empty)_")]
    key = key or str(df.columns[0])
    rest = [c for c in df.columns if c != key]
    groups = [rest[i:i + MAX_COLUMNS - 1] for i in range(0, len(rest), MAX_COLUMNS - 1)] or [[]]
    out = []
    for cols in groups:
        rows = []
        for _, row in df.iterrows():
            cells_out = []
            for c in [key, *cols]:
                f = (cells or {}).get(c)
                cells_out.append(f(row[c], row) if f is not None else fmt(row[c], digits))
            rows.append(cells_out)
        out.append(Table(rows, headers=[str(c) for c in [key, *cols]]))
    return out


def say(text: str) -> Markdown:
    """The sentence above a table or a chart saying what it shows."""
    return Markdown(f"_{text}_")


def glossary_table(entries: Sequence[tuple[str, str]], title: str = "Metric glossary") -> list:
    """A heading and a two-column table: each metric's name and what it means."""
    if not entries:
        return []
    return [Markdown(f"## {title}"), say("What each metric on this card means."),
            Table([[name, meaning] for name, meaning in entries], headers=["metric", "meaning"])]


# -------------------------------------------------------------------------------------------- charts
def series_state(values: pd.Series) -> str:
    """"no data" (nothing finite), "all zero", or "" (something to draw)."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    finite = finite[finite.map(math.isfinite)]
    if finite.empty:
        return "no data"
    if (finite == 0).all():
        return "all zero"
    return ""


def curves_figure(df: pd.DataFrame, curves: Sequence[tuple[str, str]], ncol: int = 3):
    """One small plot per (column, label); a metric with nothing to draw gets its state in words
    ("all zero over 4 steps", "no data") in place of empty axes."""
    pyplot = plt()
    nrow = max(1, math.ceil(len(curves) / ncol))
    fig, axes = pyplot.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.4 * nrow), squeeze=False)
    for ax, (col, label) in zip(axes.flat, curves):
        ax.set_title(label, fontsize=9)
        state = series_state(df[col]) if col in df else "no data"
        if state:
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("#bbbbbb")
            words = f"{state}\nover {len(df)} step(s)" if state == "all zero" else state
            ax.text(0.5, 0.5, words, ha="center", va="center", fontsize=12, color="#555555", transform=ax.transAxes)
            continue
        ax.plot(df["step"], df[col], marker="o", markersize=2.5, linewidth=1.2)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt().close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- live card
class LiveTrainingCard:
    """The ``training`` card while ``train`` runs: a progress bar, the latest step's headline metrics and
    the curves so far, refreshed from the trainer's ``on_step`` callback at most once per ``refresh_s``
    seconds (each refresh starts a small card process; Metaflow saves the data to the datastore, where
    ``metaflow.cards.get_cards(task)[i].get_data()`` and ``card server`` read it while the task runs)."""

    HEADLINE = ("reward", "accuracy", "ptd_loss", "truncated_frac", "response_length", "time_step")

    def __init__(self, card: Any, total_steps: int, refresh_s: float, curves: Sequence[tuple[str, str]],
                 title: str = "Training (live)"):
        self.card, self.total, self.refresh_s, self.curves = card, int(total_steps), float(refresh_s), list(curves)
        self.rows: list[dict[str, float]] = []
        self.last_refresh = 0.0
        self.progress = ProgressBar(max=max(1, self.total), label="training steps", value=0)
        self.latest = Markdown("_Waiting for the first training step._")
        self.chart = Image(figure_png(curves_figure(pd.DataFrame({"step": []}), self.curves[:3])),
                           label="training curves so far", disable_updates=False)
        for c in (Markdown(f"# {title}"),
                  say("This card refreshes while training runs; the full card replaces it when training ends."),
                  self.progress, self.latest, self.chart):
            self.card.append(c)
        self.card.refresh()

    def __call__(self, result: Any) -> None:
        try:
            self._update(int(result.step), dict(result.metrics))
        except Exception as e:  # noqa: BLE001 - the live view never stops training
            print(f"[ptdpo] live training card: not updated at step {result.step} ({type(e).__name__}: {e})")

    def _update(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, **metrics})
        self.progress.update(step, metadata=f"step {step} of {self.total}")
        shown = " · ".join(f"**{k}** {fmt(float(metrics[k]))}" for k in self.HEADLINE if k in metrics)
        self.latest.update(f"**step** {step} of {self.total} · {shown}")
        now = time.monotonic()
        if now - self.last_refresh >= self.refresh_s or step >= self.total:
            self.last_refresh = now
            df = pd.DataFrame(self.rows)
            self.chart.update(figure_png(curves_figure(df, [c for c in self.curves if c[0] in df])))
            self.card.refresh()

    def finish(self) -> None:
        """Clear the live components; the flow appends the final card."""
        self.card.clear()
