from __future__ import annotations

from matplotlib.figure import Figure

from src.plots import short_label


def sweep_figure(rows: list[dict]) -> Figure:
    """Horizontal bars per job: best validation and test accuracy; failed jobs are labelled as such."""
    figure = Figure(figsize=(9, 1.0 + 0.5 * len(rows)), layout="constrained")
    ax = figure.subplots()
    varied = _with_short_keys([row["varied"] for row in rows])
    labels = [short_label(f"{row['job'].split('_', 1)[0]}: {text}", 48) for row, text in zip(rows, varied)]
    positions = range(len(rows))
    for offset, key, color in ((-0.2, "val/acc_best", "tab:blue"), (0.2, "test/acc", "tab:orange")):
        values = [row[key] if row["status"] == "ok" and row[key] is not None else 0.0 for row in rows]
        bars = ax.barh([p + offset for p in positions], values, height=0.4, color=color, label=key)
        ax.bar_label(bars, labels=[f"{v:.2%}" if v else "" for v in values], fontsize=7, padding=2)
    for position, row in zip(positions, rows):
        if row["status"] != "ok":
            ax.text(0.01, position, f"{row['status']}: {row['error'][:60]}", va="center", color="tab:red", fontsize=8,
                    transform=ax.get_yaxis_transform())
    ok_values = [row[k] for row in rows for k in ("val/acc_best", "test/acc") if row["status"] == "ok" and row[k]]
    low = min(ok_values, default=0.0)
    ax.set_xlim(max(0.0, low - (1 - low) * 0.5 - 0.002), 1.0)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy")
    ax.set_title("sweep: best validation and test accuracy per job")
    # Below the axes: beside them it covered the labels of bars at 100%, which reach past the axes.
    figure.legend(loc="outside lower center", ncols=2)
    return figure


def _with_short_keys(varied: list[str]) -> list[str]:
    """Each "key=value ..." with the keys' last parts only (model.optimizer.lr -> lr), unless two keys would then
    read the same."""
    keys = {word.partition("=")[0] for text in varied for word in text.split() if "=" in word}
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    if len(set(short.values())) < len(keys):
        return varied

    def shorten(word: str) -> str:
        key, equals, value = word.partition("=")
        return f"{short[key]}={value}" if equals else word

    return [" ".join(shorten(word) for word in text.split()) for text in varied]
