"""service layer (DESIGN §1)."""
