from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from src.plots import short_label


def sweep_figure(rows: list[dict]) -> Figure:
    """A row per job with its best validation and test accuracy as dots; failed jobs are labelled as such."""
    figure = Figure(figsize=(9, 1.0 + 0.5 * len(rows)), layout="constrained")
    ax = figure.subplots()
    varied = _with_short_keys([row["varied"] for row in rows])
    labels = [short_label(f"{row['job'].split('_', 1)[0]}: {text}", 64) for row, text in zip(rows, varied)]
    positions = range(len(rows))
    # Dots, not bars: the axis starts near the lowest accuracy, where a bar's length would overstate differences.
    for offset, key, color in ((-0.15, "val/acc_best", "tab:blue"), (0.15, "test/acc", "tab:orange")):
        points = [(row[key], position + offset) for position, row in zip(positions, rows)
                  if row["status"] == "ok" and row[key] is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], "o", color=color, label=key, clip_on=False)  # 100%
        for x, y in points:
            ax.annotate(f"{x:.2%}", (x, y), xytext=(5, 0), textcoords="offset points", va="center", fontsize=7)
    for position, row in zip(positions, rows):
        if row["status"] != "ok":
            error = row["error"] if len(row["error"]) <= 60 else row["error"][:59] + "…"
            ax.text(0.01, position, f"{row['status']}: {error}", va="center", color="tab:red", fontsize=8,
                    transform=ax.get_yaxis_transform())
    ok_values = [row[k] for row in rows for k in ("val/acc_best", "test/acc") if row["status"] == "ok" and row[k]]
    low = min(ok_values, default=0.0)
    ax.set_xlim(max(0.0, low - (1 - low) * 0.5 - 0.002), 1.0)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first job on top, each row its full height
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))  # as many decimals as the ticks' spacing needs
    ax.set_xlabel("accuracy")
    ax.grid(axis="y", alpha=0.3)  # a line along each job's row
    ax.set_title("sweep: best validation and test accuracy per job")
    # Below the axes: beside them it covered the labels of dots at 100%, which reach past the axes.
    figure.legend(loc="outside lower center", ncols=2)
    return figure


def _with_short_keys(varied: list[str]) -> list[str]:
    """Each "key=value ..." with each key cut to its shortest ending no other key has: model.optimizer.lr -> lr, and
    beside model.scheduler.name, model.optimizer.name -> optimizer.name."""
    keys = {word.partition("=")[0] for text in varied for word in text.split() if "=" in word}
    short = {key: _shortest_distinct_ending(key, keys) for key in keys}

    def shorten(word: str) -> str:
        key, equals, value = word.partition("=")
        return f"{short[key]}={value}" if equals else word

    return [" ".join(shorten(word) for word in text.split()) for text in varied]


def _shortest_distinct_ending(key: str, keys: set[str]) -> str:
    parts = key.split(".")
    for count in range(1, len(parts)):
        ending = ".".join(parts[-count:])
        if not any(other != key and (other == ending or other.endswith("." + ending)) for other in keys):
            return ending
    return key
