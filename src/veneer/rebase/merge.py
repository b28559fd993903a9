"""Record-level three-way merges of the files veneer knows: the account databases (passwd, shadow,
group, gshadow and their `-` backups), dpkg's and apt's deb822 databases, and pacman's local database.

Pure: bytes in, bytes out, no filesystem access and no logging; reading, writing and reporting are the
caller's. Each record is merged by the rule rebase applies to whole files: child equal to the old base
takes the new base's (deletion included), new base equal to the old takes the child's, both equal take
that; anything else is a `Conflict`, resolved by `Prefer` and reported.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Prefer(enum.StrEnum):
    """Which side a conflict keeps; the values are the spellings of `rebase --prefer`."""

    CHILD = "child"
    BASE = "base"


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    """A record both sides changed differently (or an id both sides took), already resolved."""

    record: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    """A merged file and the conflicts `prefer` resolved on the way."""

    content: bytes
    conflicts: tuple[Conflict, ...]


class Merger(enum.StrEnum):
    """How a known file is split into records and merged."""

    PASSWD = "passwd"
    SHADOW = "shadow"
    GROUP = "group"
    GSHADOW = "gshadow"
    SUBUID = "subuid"  # NAME:FIRST:COUNT, as useradd adds them on Debian
    SUBGID = "subgid"
    DPKG = "dpkg"
    APT = "apt"
    DEBCONF = "debconf"  # debconf's database: paragraphs keyed by Name
    LINES = "lines"  # a set of lines (/etc/shells, dpkg's file triggers): each side's additions and removals

    def merge(self, *, old: bytes | None, child: bytes, new: bytes | None, prefer: Prefer) -> Merged:
        """Merge the three versions of a file of this kind; an absent base version counts as empty."""
        if self in (Merger.DPKG, Merger.APT, Merger.DEBCONF):
            key = "name" if self is Merger.DEBCONF else "package"
            return _merge_deb822(
                _text(old), _text(child), _text(new), prefer=prefer, sort=self is Merger.DPKG, key=key
            )
        if self is Merger.LINES:
            return Merged(
                content=_bytes(_merge_line_set(_text(old), _text(child), _text(new))), conflicts=()
            )
        return _merge_accounts(self, _text(old), _text(child), _text(new), prefer=prefer)

    @property
    def noun(self) -> str:
        """What a record of the file is, as conflicts name it."""
        return "group" if self in (Merger.GROUP, Merger.GSHADOW, Merger.SUBGID) else "user"

    @property
    def member_fields(self) -> tuple[int, ...]:
        """The fields that hold comma-separated user lists, merged as sets."""
        return {Merger.GROUP: (3,), Merger.GSHADOW: (2, 3)}.get(self, ())

    @property
    def id_field(self) -> tuple[str, int] | None:
        """The numeric id two names must not share (its name and field), if the file holds one."""
        return {Merger.PASSWD: ("uid", 2), Merger.GROUP: ("gid", 2)}.get(self)


_MERGERS: Mapping[str, Merger] = MappingProxyType(
    {
        **{
            f"etc/{name}{suffix}": Merger(name)
            for name in ("passwd", "shadow", "group", "gshadow", "subuid", "subgid")
            for suffix in ("", "-")
        },
        "var/lib/dpkg/status": Merger.DPKG,
        "var/lib/dpkg/status-old": Merger.DPKG,
        "var/lib/dpkg/available": Merger.DPKG,
        "var/lib/apt/extended_states": Merger.APT,
        **{f"var/cache/debconf/{name}": Merger.DEBCONF for name in ("config.dat", "templates.dat")},
        **{f"var/cache/debconf/{name}-old": Merger.DEBCONF for name in ("config.dat", "templates.dat")},
        "etc/shells": Merger.LINES,
        "var/lib/dpkg/triggers/File": Merger.LINES,
    }
)


def merger_for(relative: str) -> Merger | None:
    """The merger of `relative` (a path inside the root, no leading slash), or None if not mergeable."""
    return _MERGERS.get(relative)


def merge_file(
    relative: str, *, old: bytes | None, child: bytes, new: bytes | None, prefer: Prefer
) -> Merged:
    """Merge the child's version of the known file `relative` with the change from `old` to `new`.

    Versions equal as bytes short-cut the record merge, so such results are exact: new base unchanged
    gives the child's bytes, child unchanged (or equal to the new base) gives the new base's. A base
    version that is None merges as an empty file; whether the whole file goes (the new base deleted
    it and the child did not change it) is the caller's decision, as for any file.
    """
    merger = merger_for(relative)
    if merger is None:
        raise ValueError(f"veneer does not merge {relative!r}")
    if new is not None and child == new:
        return Merged(content=child, conflicts=())
    if old is not None and new is not None and child == old:
        return Merged(content=new, conflicts=())
    if new == old:
        return Merged(content=child, conflicts=())
    return merger.merge(old=old, child=child, new=new, prefer=prefer)


def merge_pacman_entries(
    *,
    old: Mapping[str, str],
    child: Mapping[str, str],
    new: Mapping[str, str],
    prefer: Prefer,
) -> tuple[dict[str, str], tuple[Conflict, ...]]:
    """Merge pacman's local database: package name -> entry directory (`NAME-VERSION-REL`) per side.

    A package absent from the result is removed. Order: the new base's, then the child's own packages.
    """
    merged, conflicts = _merge_records(old, child, new, prefer=prefer, label=lambda name: f"package {name}")
    return merged, tuple(conflicts)


def _text(data: bytes | None) -> str:
    # surrogateescape gives back the exact bytes of non-UTF-8 text (a Latin-1 GECOS field, say).
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# The generic three-way merge of keyed records.


def _merge_records(
    old: Mapping[K, V],
    child: Mapping[K, V],
    new: Mapping[K, V],
    *,
    prefer: Prefer,
    label: Callable[[K], str],
    merge_both: Callable[[V | None, V, V], tuple[V, str | None]] | None = None,
) -> tuple[dict[K, V], list[Conflict]]:
    """Merge record by record, in the new base's order, then the child's own records in the child's.

    `merge_both` merges a record both sides changed differently (and both still have) when the kind
    of record allows it; it returns the merged record and the reason of the conflict left, if any.
    """
    merged: dict[K, V] = {}
    conflicts: list[Conflict] = []
    for key in dict.fromkeys([*new, *child]):
        o, c, n = old.get(key), child.get(key), new.get(key)
        if c == o:
            value, reason = n, None
        elif n == o or c == n:
            value, reason = c, None
        elif merge_both is not None and c is not None and n is not None:
            value, reason = merge_both(o, c, n)
        else:
            value, reason = (c if prefer is Prefer.CHILD else n), _conflict_reason(o, c, n)
        if reason is not None:
            conflicts.append(Conflict(record=label(key), reason=reason))
        if value is not None:
            merged[key] = value
    return merged, conflicts


def _conflict_reason(old: object, child: object, new: object) -> str:
    if old is None:
        return "added on both sides, differently"
    if child is None:
        return "deleted in the child, changed in the base"
    if new is None:
        return "changed in the child, deleted in the base"
    return "changed on both sides"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Key:
    """A record's identity. A record with no name (a comment, a malformed line) is its own text, so it
    never conflicts: each side has it or not. Duplicates in one file are told apart by `n`, so that
    none is lost."""

    named: bool
    name: str
    arch: str = ""
    n: int = 0


def _keyed(items: Iterable[tuple[_Key, V]]) -> dict[_Key, V]:
    seen: Counter[_Key] = Counter()
    records: dict[_Key, V] = {}
    for key, value in items:
        records[_Key(named=key.named, name=key.name, arch=key.arch, n=seen[key])] = value
        seen[key] += 1
    return records


def _describe(key: _Key, noun: str) -> str:
    what = f"{noun} {key.name}:{key.arch}" if key.arch else f"{noun} {key.name}"
    return what if key.n == 0 else f"{what} (duplicate {key.n + 1})"


# Account databases: colon-separated lines keyed by the name in the first field.


def _parse_lines(text: str) -> tuple[dict[_Key, str], bool]:
    """The records of `text` by key, and whether the last line ends with a newline."""
    lines = text.split("\n")
    trailing = len(lines) > 1 and lines[-1] == ""
    if lines[-1] == "":
        lines.pop()
    return _keyed((_line_key(line), line) for line in lines), trailing


def _line_key(line: str) -> _Key:
    name, colon, _ = line.partition(":")
    if colon and name and not name.startswith("#"):
        return _Key(named=True, name=name)
    return _Key(named=False, name=line)


def _merge_accounts(merger: Merger, old: str, child: str, new: str, *, prefer: Prefer) -> Merged:
    (o, _), (c, child_trailing), (n, new_trailing) = (
        _parse_lines(old),
        _parse_lines(child),
        _parse_lines(new),
    )

    def merge_both(o_line: str | None, c_line: str, n_line: str) -> tuple[str, str | None]:
        return _merge_member_line(o_line, c_line, n_line, fields=merger.member_fields, prefer=prefer)

    merged, conflicts = _merge_records(
        o,
        c,
        n,
        prefer=prefer,
        label=lambda key: _describe(key, merger.noun),
        merge_both=merge_both if merger.member_fields else None,
    )
    if merger.id_field is not None:
        what, index = merger.id_field
        conflicts += _report_id_clashes(merged, c, n, what=what, index=index)
    # The file ends as the new base's does, unless it was empty and only the child's gives a hint.
    trailing = new_trailing if n else child_trailing if c else True
    content = "\n".join(merged.values()) + ("\n" if merged and trailing else "")
    return Merged(content=_bytes(content), conflicts=tuple(conflicts))


def _merge_member_line(
    old: str | None, child: str, new: str, *, fields: tuple[int, ...], prefer: Prefer
) -> tuple[str, str | None]:
    """Merge a group line both sides changed: member lists as sets, the other fields as one record."""
    c, n = child.split(":"), new.split(":")
    o = old.split(":") if old is not None else None
    if len(c) != len(n) or (o is not None and len(o) != len(c)) or max(fields) >= len(c):
        return (child if prefer is Prefer.CHILD else new), _conflict_reason(old, child, new)

    def rest(values: list[str]) -> list[str]:
        return [value for i, value in enumerate(values) if i not in fields]

    o_rest = rest(o) if o is not None else None
    reason = None
    if rest(c) == o_rest:
        kept = rest(n)
    elif rest(n) == o_rest or rest(c) == rest(n):
        kept = rest(c)
    else:
        kept, reason = rest(c if prefer is Prefer.CHILD else n), _conflict_reason(old, child, new)
    others = iter(kept)
    merged = [
        _merge_members(o[i] if o is not None else "", c[i], n[i]) if i in fields else next(others)
        for i in range(len(c))
    ]
    return ":".join(merged), reason


def _merge_members(old: str, child: str, new: str) -> str:
    """Merge comma-separated user lists as sets: each addition and each removal of either side holds."""
    o, c, n = ({m: None for m in value.split(",") if m} for value in (old, child, new))
    return ",".join(m for m in {**n, **c} if (m in c and m in n if m in o else True))


def _report_id_clashes(
    merged: Mapping[_Key, str],
    child: Mapping[_Key, str],
    new: Mapping[_Key, str],
    *,
    what: str,
    index: int,
) -> list[Conflict]:
    """Report ids the merge gives both to names only the child has and to other names only the base has
    (the child's `useradd alice` and the base's `useradd bob` both took 1000).

    Both records stay: dropping one would leave the files and packages of that side without their
    account, and renumbering one would hand the other side's files to it. They share the id until the
    administrator renumbers one (`usermod -u`, `groupmod -g`); the conflict says so. An id one side
    itself gives several names is that side's business.
    """

    def id_of(records: Mapping[_Key, str], key: _Key) -> str | None:
        fields = records[key].split(":") if key.named and key in records else []
        return fields[index] if len(fields) > index else None

    claims: dict[str, dict[Prefer, list[_Key]]] = {}
    for key in merged:
        value = id_of(merged, key)
        if value is None:
            continue
        sides = [
            side
            for side, records in ((Prefer.CHILD, child), (Prefer.BASE, new))
            if id_of(records, key) == value
        ]
        if len(sides) == 1:
            claims.setdefault(value, {}).setdefault(sides[0], []).append(key)
    conflicts = []
    for value, claimed in claims.items():
        if len(claimed) == 2:
            names = {side: ", ".join(key.name for key in keys) for side, keys in claimed.items()}
            reason = (
                f"{what} {value} taken by {names[Prefer.CHILD]} (child) and {names[Prefer.BASE]} (base); "
                "both kept, sharing it: give one another id"
            )
            conflicts.append(Conflict(record=f"{what} {value}", reason=reason))
    return conflicts


# deb822 databases (dpkg's status and available, apt's extended_states): paragraphs keyed by package.
# apt writes extended_states in its cache's order, not sorted, so that file keeps the merge order.


@dataclass(frozen=True, slots=True, kw_only=True)
class _Paragraph:
    """A paragraph compared by its parsed fields; its lines are written back as they were."""

    fields: tuple[tuple[str, str], ...]
    lines: tuple[str, ...] = field(compare=False)


def _parse_paragraphs(text: str, key: str) -> dict[_Key, _Paragraph]:
    blocks: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return _keyed(_paragraph(block, key) for block in blocks if block)


def _paragraph(lines: list[str], key_field: str) -> tuple[_Key, _Paragraph]:
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if line[0] in " \t" and fields:
            # A continuation line belongs to the field above it (deb822(5)).
            fields[-1] = (fields[-1][0], f"{fields[-1][1]}\n{line}")
        elif colon and name.strip() and not line.startswith("#"):
            fields.append((name.strip(), value.strip()))
        else:
            fields.append(("", line))
    values = {name.lower(): value for name, value in reversed(fields)}
    package = values.get(key_field, "")
    key = _Key(named=True, name=package, arch=values.get("architecture", ""))
    if not package:
        key = _Key(named=False, name="\n".join(lines))
    return key, _Paragraph(fields=tuple(fields), lines=tuple(lines))


def _merge_deb822(old: str, child: str, new: str, *, prefer: Prefer, sort: bool, key: str) -> Merged:
    merged, conflicts = _merge_records(
        _parse_paragraphs(old, key),
        _parse_paragraphs(child, key),
        _parse_paragraphs(new, key),
        prefer=prefer,
        label=lambda k: _describe(k, "package" if key == "package" else "entry"),
    )
    keys = list(merged)
    if sort:
        # dpkg writes its database sorted by package name, then the native architecture before foreign
        # ones (pkg_sorter_by_nonambig_name_arch() in lib/dpkg/pkg.c). Only the new base knows which is
        # native, so within a name the merge order stands: the new base's, then the child's own.
        # Paragraphs without a package name (never written by dpkg) follow in the order they came.
        keys = sorted((key for key in keys if key.named), key=lambda key: key.name)
        keys += [key for key in merged if not key.named]
    content = "".join("".join(f"{line}\n" for line in merged[key].lines) + "\n" for key in keys)
    return Merged(content=_bytes(content), conflicts=tuple(conflicts))


def _merge_line_set(old: str, child: str, new: str) -> str:
    """The new base's lines without those the child removed, then the lines the child added."""
    o, c, n = (text.splitlines() for text in (old, child, new))
    removed = set(o) - set(c)
    kept = [line for line in n if line not in removed]
    seen = set(o) | set(kept)
    added = [line for line in c if line not in seen]
    return "".join(f"{line}\n" for line in kept + added)
