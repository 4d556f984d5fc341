"""Example run configurations (YAML), shipped with dynprune; see dynprune.config.shipped_configs."""
