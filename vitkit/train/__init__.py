"""Fine-tuning: datasets and augmentation (datasets.py, augment.py), the training loop (trainer.py)."""
