"""client layer (DESIGN §1)."""
