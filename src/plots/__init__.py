"""Matplotlib figures, each returned as a Figure: callers save them as PNG and/or log them to TensorBoard."""
