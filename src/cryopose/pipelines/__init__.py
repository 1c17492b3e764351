"""Data-set level workflows that chain search, training, inference and reconstruction."""
