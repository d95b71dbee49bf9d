"""Matplotlib figures, each returned as a Figure: callers save them as PNG and/or log them to TensorBoard."""


def short_label(text: str, limit: int) -> str:
    """`text` cut to `limit` characters in the middle, with "…" there: the start and the end (where file names and
    override lists differ: IMG_2026…5512.png) both stay readable."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]
