"""A quicker decoder of facts, exactly as strict as `codec.decode_fact` (issue 13).

msgspec checks each constrained field while it decodes; for a pattern it calls Python's `re`
(about 0.75 us an id here), and a purchase has a dozen ids, periods and fingerprints: 11 of the
18 us a purchase took to decode, which was the projection writer's largest cost (py-spy).

Here the busiest facts are decoded into subclasses of their own types whose fields carry no
constraint (msgspec still checks every type, tag, literal and required field), then their
constraints are checked afterwards, from the same `Meta`s, the known patterns by hand-written
string tests (tests/unit/test_checked_decode.py holds each to its regular expression). Anything
that fails either step is decoded again by `codec.decode_fact`, which raises the usual
InvalidMessage (or takes it, if a check here was stricter): what is set aside is exactly what
the validated decoder sets aside. The facts returned are instances of the subclasses: `isinstance`
of the fact types, with the same fields and encodings, but not `==` to an instance of the type
itself (msgspec compares types): for the projection writer, which needs no more.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from schemas import codec
from schemas.facts import (
    FACT_TYPES,
    Fact,
    PurchaseAuthorized,
    PurchaseAuthorizedV2,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
    upcast_event_id,
)

Check = Callable[[Any], bool]

# The facts of nearly every record: decoded the quick way. The others keep their own types.
QUICK_TYPES = (
    PurchaseAuthorized, PurchaseAuthorizedV2, PurchaseRejected, PurchaseRefunded, RefundRejected,
)  # fmt: skip

_DIGITS = frozenset("0123456789")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-"
_CATEGORY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_CATEGORY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_HEX = "0123456789abcdef"
_MONTHS = frozenset(f"{m:02d}" for m in range(1, 13))


def _id(value: str) -> bool:  # ^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$(?!\n)
    return 0 < len(value) <= 64 and value[0] in _ALNUM and not value.strip(_ID_CHARS)


def _period(value: str) -> bool:  # ^[0-9]{4}-(0[1-9]|1[0-2])$(?!\n)
    return (
        len(value) == 7
        and value[4] == "-"
        and value[5:] in _MONTHS
        and all(c in _DIGITS for c in value[:4])
    )


def _category(value: str) -> bool:  # ^[a-z][a-z0-9_]{1,31}$(?!\n)
    return (
        2 <= len(value) <= 32 and value[0] in _CATEGORY_FIRST and not value.strip(_CATEGORY_CHARS)
    )


def _fingerprint(value: str) -> bool:  # ^[0-9a-f]{32}$(?!\n)
    return len(value) == 32 and not value.strip(_HEX)


# Hand-written tests of the patterns of schemas/types.py, by the pattern's exact text: a pattern
# changed there is no longer found here and is checked with `re`, as msgspec does.
KNOWN_PATTERNS: dict[str, Callable[[str], bool]] = {
    r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$(?!\n)": _id,
    r"^[0-9]{4}-(0[1-9]|1[0-2])$(?!\n)": _period,
    r"^[a-z][a-z0-9_]{1,31}$(?!\n)": _category,
    r"^[0-9a-f]{32}$(?!\n)": _fingerprint,
}


# Most ids, periods and categories come again and again (accounts, ISPs, publishers, parties):
# each pattern remembers up to this many values that passed it.
MEMO_VALUES_MAX = 100_000


def _search(pattern: str) -> Callable[[str], bool]:
    search = re.compile(pattern).search  # what msgspec does with a pattern it does not know
    return lambda value: search(value) is not None


def _memo(test: Callable[[str], bool]) -> tuple[set[str], Callable[[str], bool]]:
    seen: set[str] = set()

    def add(value: str) -> bool:
        if not test(value):
            return False
        if len(seen) >= MEMO_VALUES_MAX:
            seen.clear()
        seen.add(value)
        return True

    return seen, add


# A check is generated as one Python expression per type (a closure per field measured 10.9 us a
# purchase, the expression about 2 us): `Expr` writes the test of one constraint on a variable.
Expr = Callable[[str], str]


def _compare(form: str, operator: str, bound: float) -> Expr:
    return lambda v: f"{form.format(v)} {operator} {bound!r}"


class _Mirror:
    """Builds, per struct type, an unconstrained subclass and the check of its constraints."""

    def __init__(self) -> None:
        self.types: dict[type, type] = {}
        self.checks: dict[type, Check] = {}
        self.exprs: dict[type, Expr] = {}
        self.names: dict[str, Any] = {}  # what the generated code refers to
        self.memos: dict[str, tuple[str, str]] = {}  # pattern: names of its memo and test

    def _named(self, value: Any) -> str:
        name = f"_v{len(self.names)}"
        self.names[name] = value
        return name

    def _meta(self, meta: Meta) -> list[Expr]:
        if meta.multiple_of is not None or meta.tz is False:
            raise NotImplementedError(f"no quick check of {meta}")
        found: list[Expr] = []
        if meta.pattern is not None:
            if meta.pattern not in self.memos:  # one memo per pattern, for every field of it
                seen, add = _memo(KNOWN_PATTERNS.get(meta.pattern) or _search(meta.pattern))
                self.memos[meta.pattern] = (self._named(seen), self._named(add))
            seen_name, add_name = self.memos[meta.pattern]
            found.append(lambda v: f"{v} in {seen_name} or {add_name}({v})")
        for bound, operator in ((meta.gt, ">"), (meta.ge, ">="), (meta.lt, "<"), (meta.le, "<=")):
            if bound is not None:
                found.append(_compare("{}", operator, bound))
        for length, operator in ((meta.min_length, ">="), (meta.max_length, "<=")):
            if length is not None:
                found.append(_compare("len({})", operator, length))
        if meta.tz is True:
            found.append(lambda v: f"{v}.tzinfo is not None")
        return found

    def field(self, hint: Any, depth: int = 0) -> tuple[Any, Expr | None]:
        """The unconstrained type of a field's annotation, and the test of what it drops."""
        origin = get_origin(hint)
        if origin is Annotated:
            base, *extras = get_args(hint)
            inner, test = self.field(base, depth)
            tests = [] if test is None else [test]
            tests += [t for meta in extras if isinstance(meta, Meta) for t in self._meta(meta)]
            if not tests:
                return inner, None
            return inner, lambda v: " and ".join(f"({t(v)})" for t in tests)
        if origin in (Union, UnionType):
            args = get_args(hint)
            members = [self.field(arg, depth) for arg in args]
            if len(args) != 2 or args[1] is not NoneType:
                if any(test is not None for _, test in members):
                    raise NotImplementedError(f"no quick check of {hint}")
                return hint, None
            inner, test = members[0]
            if test is None:
                return inner | None, None
            return inner | None, lambda v: f"({v} is None or ({test(v)}))"
        if origin is tuple:
            args = get_args(hint)
            if len(args) != 2 or args[1] is not Ellipsis:
                raise NotImplementedError(f"no quick check of {hint}")
            inner, test = self.field(args[0], depth + 1)
            if test is None:
                return tuple[inner, ...], None  # type: ignore[valid-type]
            x = f"_x{depth}"
            return tuple[inner, ...], lambda v: f"all({test(x)} for {x} in {v})"  # type: ignore[valid-type]
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            subclass = self.struct(hint)
            return subclass, self.exprs[hint]
        return hint, None

    def struct(self, cls: type) -> type:
        if cls in self.types:
            return self.types[cls]
        hints = get_type_hints(cls, include_extras=True)
        fields: list[tuple[str, Any]] = []
        tests: list[tuple[str, Expr]] = []
        for name in cls.__struct_fields__:  # type: ignore[attr-defined]
            inner, test = self.field(hints[name])
            fields.append((name, inner))
            if test is not None:
                tests.append((name, test))
        config = cls.__struct_config__  # type: ignore[attr-defined]
        annotations = dict(fields)
        subclass = types.new_class(  # redefines the annotations: same names, order, tag, config
            f"Checked{cls.__name__}", (cls,), {"frozen": config.frozen, "tag": config.tag},
            lambda namespace: namespace.update(__annotations__=annotations, __module__=__name__),
        )  # fmt: skip
        self.exprs[cls] = lambda v: " and ".join(f"({t(f'{v}.{n}')})" for n, t in tests) or "True"
        self.types[cls] = subclass
        self.checks[cls] = eval(f"lambda o: {self.exprs[cls]('o')}", dict(self.names))
        return subclass


def _quick_types() -> dict[type, type]:
    """The subclass of each of QUICK_TYPES; a type with a constraint not known here (a schema
    changed since) is left out: msgspec checks it, as before."""
    mirror, found = _Mirror(), dict[type, type]()
    for cls in QUICK_TYPES:
        try:
            found[cls] = mirror.struct(cls)
        except NotImplementedError:
            continue
    _CHECKS.update({found[cls]: mirror.checks[cls] for cls in found})
    return found


_CHECKS: dict[type, Check] = {}
_QUICK = _quick_types()
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
    Union[tuple(_QUICK.get(cls, cls) for cls in FACT_TYPES)]  # noqa: UP007 (a runtime tuple)
)


def decode_fact(raw: bytes) -> Fact:
    """codec.decode_fact's fact (or its InvalidMessage), quicker for the QUICK_TYPES."""
    try:
        fact = _decoder.decode(raw)
    except msgspec.DecodeError:
        return codec.decode_fact(raw)  # says why, in the usual words
    check = _CHECKS.get(type(fact))
    if check is not None and not check(fact):
        return codec.decode_fact(raw)  # raises, or takes what a check here was stricter on
    codec.check_fact(raw, fact)
    return upcast_event_id(fact)
