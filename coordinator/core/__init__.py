"""core layer (DESIGN §1)."""
