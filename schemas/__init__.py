"""The ledger's message types: commands and facts, frozen, tagged and versioned (DESIGN.md §3)."""
