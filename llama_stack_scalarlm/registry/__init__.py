"""The model-hash registry: job ids, job directories, status, checkpoints, uploads. Files only."""
