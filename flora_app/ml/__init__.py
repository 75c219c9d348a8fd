"""Models, LoRA, data and training: what the apps build and train. Knows nothing of the wire."""
