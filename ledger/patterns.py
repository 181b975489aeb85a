"""What an id, an invoice id and a period look like, as whole-string patterns for values that come
from outside (a URL, a query string, a command line) and go on to PostgreSQL or Kafka.

The same forms as schemas.types, but matched whole with `fullmatch`: Python's `$` also matches
before a final newline, so `re.match(r"^...$")` lets "2013-12\\n" through.
"""

from __future__ import annotations

import re

# schemas.types.Id: what a purchase, account, user, publisher or ISP id can be.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
ID_FORM = "1 to 64 letters, digits and . _ : @ - (the first a letter or digit)"
# An invoice id is "{isp_id}.{period}.{account_id}" (ledger.core.billing): id characters, two
# ids, a period and two dots long at most.
INVOICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,137}")
# A credit note id is "{isp_id}.{period}.{account_id}.credit.{period}" (ledger.core.billing,
# issue 15): an invoice id, ".credit." and a period longer at most.
CREDIT_NOTE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,152}")
# schemas.types.PeriodKey, with ASCII digits only.
PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
# A page size or a port: ASCII digits only (int() also takes " 12", "1_2" and other scripts'
# digits).
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
