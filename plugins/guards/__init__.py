"""Built-in guards: one module per step type."""
