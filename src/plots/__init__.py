"""Matplotlib figures, each returned as a Figure: callers save them as PNG and/or log them to TensorBoard."""


def short_label(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in "…" when cut, so a caption or axis label fits its place."""
    return text if len(text) <= limit else text[: limit - 1].rstrip("._- ") + "…"
