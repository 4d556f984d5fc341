"""Built-in dynprune plugins: degradations, difficulty labelers, losses, datasets."""
