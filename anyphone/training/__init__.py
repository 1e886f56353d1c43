"""Training services: the loop, distributed set-up and checkpoints (save / resume / average)."""
