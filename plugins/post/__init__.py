"""Built-in post steps (re-ranking): one module per step type."""
