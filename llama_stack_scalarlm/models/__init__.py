"""The model store: Hugging Face directories under ``<state_dir>/models`` that engines and trainers load."""
