"""Built-in backbones for dynprune, registered through the ``dynprune`` entry-point group."""
