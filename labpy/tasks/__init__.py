"""Data with known answers, generated on the fly from a seed."""
