"""Built-in tiers: one module per step type."""
