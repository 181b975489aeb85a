"""The latest ISPs and publishers, read whole from the compacted `ledger.reference` into memory,
for the readers that need no more than the latest values: the API (a publisher's key, names, the
ISPs known). The workers decide with the reference data in their partitions' command order
instead (issue 15: reference.change_requested.v1, ledger.core.reference). A reader of our own
rather than faust's GlobalTable, whose assignor fails silently with a custom changelog topic
(faust-streaming issues #283 and #438: the worker hangs at "performing partition assignments").
"""

from __future__ import annotations

import asyncio
import logging

from ledger.core.reference import Reference
from ledger.kafka import topics
from ledger.kafka.follow import follow
from ledger.kafka.settings import CONSUMER_AUTO_OFFSET_RESET
from schemas import codec
from schemas.reference import IspRegistered, PublisherRegistered

log = logging.getLogger("ledger.streams.reference")  # its name before issue 17
POLL_TIMEOUT_MS = 500


class ReferenceReader:
    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._isps: dict[str, IspRegistered] = {}
        self._publishers: dict[str, PublisherRegistered] = {}
        # The dicts are updated in place: a Context built on this Reference sees every change.
        self.reference = Reference(isps=self._isps, publishers=self._publishers)
        self.ready = asyncio.Event()
        self.records_read = 0
        self.invalid = 0

    def apply(self, raw: bytes | None) -> None:
        if raw is None:
            return  # a tombstone: records are never deleted, only replaced
        try:
            record = codec.decode_reference(raw)
        except codec.InvalidMessage as invalid:
            self.invalid += 1
            log.warning("an invalid record on %s was skipped: %s", topics.REFERENCE, invalid)
            return
        if isinstance(record, IspRegistered):
            self._isps[record.isp_id] = record
        else:
            self._publishers[record.publisher_id] = record
        self.records_read += 1

    def note(self, record: IspRegistered | PublisherRegistered) -> None:
        """A record this process just sent: known at once, before the topic brings it back."""
        if isinstance(record, IspRegistered):
            self._isps[record.isp_id] = record
        else:
            self._publishers[record.publisher_id] = record

    def _read(self) -> None:
        log.info("reference data read: %d records", self.records_read)
        self.ready.set()

    async def run(self) -> None:
        await follow(
            self._bootstrap_servers, "ledger-reference-reader", topics.REFERENCE, 1,
            self.apply, self._read,
            # Every reader reads all of it, from the start: it is compacted, one record a key.
            auto_offset_reset=CONSUMER_AUTO_OFFSET_RESET, poll_timeout_ms=POLL_TIMEOUT_MS,
        )  # fmt: skip
