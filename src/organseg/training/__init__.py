"""The training loop, configuration presets, checkpoints and distributed set-up."""
