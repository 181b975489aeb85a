"""The ISPs' side of the checkout with consent (issue 14): `ledger idp` (server.py)."""
