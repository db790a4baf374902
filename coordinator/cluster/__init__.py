"""cluster layer (DESIGN §1)."""
