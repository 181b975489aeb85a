"""Issue 16: an upgrade activated in each partition's command order (ledger.upgrade_requested.v1)
and the fact version it brings, purchase.authorized.v2. Which version a purchase gets depends on
the log only, so the batch, the runner and a replay agree byte for byte."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import msgspec

from ledger.core.authorizer import Policy
from ledger.core.batch import PartitionSummary, decide_batch
from ledger.core.reference import PartitionReference, decode_reference, encode_reference
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState
from ledger.produce import command_record, upgrade_commands
from schemas import codec
from schemas.checked import decode_fact as quick_decode
from schemas.commands import Command
from schemas.facts import (
    PurchaseAuthorized,
    PurchaseAuthorizedV2,
    Upgraded,
    canonical,
    fact_fingerprint,
)
from tests import builders as b
from tests.builders import T0, at

POLICY = Policy(horizon_seconds=20 * 86_400)
CONSENT = hashlib.sha256(b"the ISP's assertion").hexdigest()
Log = list[tuple[int, Command | None]]


def _upgrade(partition: int = 0, partitions: int = 1) -> Command:
    return upgrade_commands("authorized_v2", partitions, T0)[partition]


def _with_consent(account_id: str, minutes: int) -> Command:
    purchase = b.purchase(account_id, when=at(minutes * 60))
    return msgspec.structs.replace(purchase, consent=CONSENT)


def _no_state(_account_id: str) -> AccountState | None:
    return None


def _log() -> Log:
    first = _with_consent("a1", 1)
    return [
        (0, b.open_account("a1")),
        (1, first),
        (2, _upgrade()),
        (3, _with_consent("a1", 2)),
        (4, first),  # the purchase before the activation, again: the fact it got then
        (5, _upgrade()),  # the same activation again: the same fact, nothing moves
        (6, b.purchase("a1", when=at(3 * 60))),  # a trusted feed's: v2 with no consent
    ]


def _batch_facts(log: Log | None = None) -> list[tuple[int, object]]:
    reference = PartitionReference.of([b.ORANGE, b.CANALPLAY])
    log = _log() if log is None else log
    batch = decide_batch(0, PartitionSummary(), log, _no_state, reference, POLICY)
    assert batch.reference is not None and batch.reference.features == {"authorized_v2": 2}
    assert reference.features == {}  # the caller's is unchanged
    return [(o, f) for o, (_, f) in zip(batch.offsets, batch.facts, strict=True)]


def test_purchases_are_v1_before_the_activation_and_v2_after_it() -> None:
    facts = _batch_facts()
    kinds = [(offset, type(fact).__name__) for offset, fact in facts[1:]]
    assert kinds == [
        (1, "PurchaseAuthorized"),
        (2, "Upgraded"),
        (3, "PurchaseAuthorizedV2"),
        (4, "PurchaseAuthorized"),
        (5, "Upgraded"),
        (6, "PurchaseAuthorizedV2"),
    ]
    v1, up, v2, again, up_again, trusted = (f for _, f in facts[1:])
    assert again == v1  # answered again with the same fact, byte for byte
    assert codec.encode(again) == codec.encode(v1)  # type: ignore[arg-type]
    assert isinstance(up, Upgraded) and up == up_again and up.feature == "authorized_v2"
    assert isinstance(v2, PurchaseAuthorizedV2) and v2.consent == CONSENT
    assert isinstance(trusted, PurchaseAuthorizedV2) and trusted.consent is None


def test_the_runner_decides_as_the_batch() -> None:
    log = _log()
    ledger = LocalAuthorizer([b.ORANGE, b.CANALPLAY], POLICY)
    facts = [f for offset, command in log if command for f in ledger.handle(command, offset)]
    batch = [codec.encode(f) for _, f in _batch_facts(log)]  # type: ignore[arg-type]
    assert [codec.encode(f) for f in facts] == batch


def test_a_batch_decided_again_from_a_newer_reference_keeps_v1_before_the_activation() -> None:
    """After a crash the stored reference may hold the activation while the summary is older:
    the purchase at offset 1 is decided again as v1, as the first time."""
    newer = PartitionReference.of([b.ORANGE, b.CANALPLAY])
    assert newer.activate("authorized_v2", 2)
    assert not newer.activate("authorized_v2", 5)  # idempotent: the first place stays
    batch = decide_batch(0, PartitionSummary(), _log()[:2], _no_state, newer, POLICY)
    assert type(batch.facts[-1][1]) is PurchaseAuthorized


def test_the_activation_is_per_partition() -> None:
    """Each partition activates at its own copy of the command: another partition that has not
    reached its copy yet still emits v1."""
    reference = PartitionReference.of([b.ORANGE, b.CANALPLAY])
    copies = upgrade_commands("authorized_v2", 4, T0)
    assert [c.partition for c in copies] == [0, 1, 2, 3]
    assert len({c.command_id for c in copies}) == 1
    records = [command_record(c, 4) for c in copies]
    assert [r[1] for r in records] == [0, 1, 2, 3]
    upgraded = decide_batch(0, PartitionSummary(), [(0, copies[0])], _no_state, reference, POLICY)
    other = [(0, b.open_account("a1")), (1, _with_consent("a1", 1))]
    before = decide_batch(1, PartitionSummary(), other, _no_state, reference, POLICY)
    assert upgraded.reference is not None and upgraded.reference.active("authorized_v2", 1)
    assert type(before.facts[-1][1]) is PurchaseAuthorized
    ids = {decide_batch(0, PartitionSummary(), [(0, c)], _no_state, reference, POLICY).facts[0][1]
           .event_id for c in copies}  # fmt: skip
    assert len(ids) == 4  # one fact per partition


def test_the_features_survive_the_encoding_and_an_older_encoding_still_decodes() -> None:
    reference = PartitionReference.of([b.ORANGE])
    reference.activate("authorized_v2", 7)
    assert decode_reference(encode_reference(reference)) == reference
    # As the previous release stored it: two fields, no features.
    older = msgspec.msgpack.encode([reference.isps, reference.publishers])
    assert decode_reference(older).features == {}


def test_v2_decodes_everywhere_as_an_authorized_purchase_and_v1_bytes_are_unchanged() -> None:
    _, v1, _, v2, *_ = (f for _, f in _batch_facts())
    assert isinstance(v1, PurchaseAuthorized) and isinstance(v2, PurchaseAuthorizedV2)
    raw1, raw2 = codec.encode(v1), codec.encode(v2)
    assert json.loads(raw1)["type"] == "purchase.authorized.v1" and b"consent" not in raw1
    assert json.loads(raw2)["type"] == "purchase.authorized.v2"
    assert json.loads(raw2)["consent"] == CONSENT
    for raw in (raw1, raw2):
        strict, quick = codec.decode_fact(raw), quick_decode(raw)
        assert isinstance(strict, PurchaseAuthorized) and isinstance(quick, PurchaseAuthorized)
        assert codec.encode(strict) == codec.encode(quick) == raw
        assert fact_fingerprint(strict) == hashlib.sha256(canonical(strict)).digest()
    # v2 with the consent left out (a trusted feed's purchase) is not v1: the type tells them apart.
    bare = msgspec.structs.replace(v2, consent=None)
    assert fact_fingerprint(bare) != fact_fingerprint(v1)  # type: ignore[arg-type]


def test_an_upgrade_command_round_trips_and_an_unknown_feature_is_refused() -> None:
    command = _upgrade(partition=2, partitions=4)
    assert codec.decode_command(codec.encode(command)) == command
    raw = codec.encode(command).replace(b"authorized_v2", b"authorized_v9")
    try:
        codec.decode_command(raw)
    except codec.InvalidMessage as error:
        assert "authorized_v9" in str(error) or error.reason
    else:
        raise AssertionError("an unknown feature was accepted")
    assert timedelta(0) == command.occurred_at - T0  # type: ignore[union-attr]
