"""Three-way merges of the known files: accounts, deb822 databases and pacman's local database."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veneer.rebase.merge import (
    Conflict,
    Merged,
    Merger,
    Prefer,
    merge_file,
    merge_pacman_entries,
    merger_for,
)

PASSWD = b"""\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
ALICE = b"alice:x:1001:1001:Alice:/home/alice:/bin/bash\n"
BOB = b"bob:x:1001:1001:Bob:/home/bob:/bin/bash\n"
CAROL = b"carol:x:1002:1002:Carol:/home/carol:/bin/bash\n"


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def merge(relative: str, old: bytes | None, child: bytes, new: bytes | None, prefer: Prefer) -> Merged:
    return merge_file(relative, old=old, child=child, new=new, prefer=prefer)


@pytest.mark.parametrize(
    ("relative", "merger"),
    [
        ("etc/passwd", Merger.PASSWD),
        ("etc/passwd-", Merger.PASSWD),
        ("etc/shadow", Merger.SHADOW),
        ("etc/shadow-", Merger.SHADOW),
        ("etc/group", Merger.GROUP),
        ("etc/group-", Merger.GROUP),
        ("etc/gshadow", Merger.GSHADOW),
        ("etc/gshadow-", Merger.GSHADOW),
        ("var/lib/dpkg/status", Merger.DPKG),
        ("var/lib/dpkg/status-old", Merger.DPKG),
        ("var/lib/dpkg/available", Merger.DPKG),
        ("var/lib/apt/extended_states", Merger.APT),
        ("etc/motd", None),
        ("/etc/passwd", None),
        ("etc/passwd.bak", None),
        ("var/lib/pacman/local/bash-5.2-1/desc", None),
    ],
)
def test_merger_for(relative: str, merger: Merger | None) -> None:
    assert merger_for(relative) is merger


def test_unknown_file_is_refused() -> None:
    with pytest.raises(ValueError, match="etc/motd"):
        merge("etc/motd", b"a", b"b", b"c", Prefer.CHILD)


# Accounts.


@pytest.mark.parametrize("prefer", list(Prefer))
def test_passwd_user_added_on_each_side(prefer: Prefer) -> None:
    new = PASSWD.replace(b"/root:/bin/bash", b"/root:/bin/zsh") + CAROL
    merged = merge("etc/passwd", PASSWD, PASSWD + ALICE, new, prefer)
    assert merged == Merged(content=new + ALICE, conflicts=())


@pytest.mark.parametrize(
    ("prefer", "kept"),
    [(Prefer.CHILD, "root:x:0:0:root:/root:/bin/zsh"), (Prefer.BASE, "root:x:0:0:root:/root:/bin/dash")],
)
def test_passwd_changed_on_both_sides(prefer: Prefer, kept: str) -> None:
    child = PASSWD.replace(b"/bin/bash", b"/bin/zsh", 1)
    new = PASSWD.replace(b"/bin/bash", b"/bin/dash", 1) + CAROL
    merged = merge("etc/passwd", PASSWD, child, new, prefer)
    assert lines(merged.content)[0] == kept
    assert lines(merged.content)[-1] == CAROL.decode().strip()
    assert merged.conflicts == (Conflict(record="user root", reason="changed on both sides"),)


@pytest.mark.parametrize(
    ("child_deletes", "prefer", "has_daemon", "reason"),
    [
        (True, Prefer.CHILD, False, "deleted in the child, changed in the base"),
        (True, Prefer.BASE, True, "deleted in the child, changed in the base"),
        (False, Prefer.CHILD, True, "changed in the child, deleted in the base"),
        (False, Prefer.BASE, False, "changed in the child, deleted in the base"),
    ],
)
def test_deletion_against_change(child_deletes: bool, prefer: Prefer, has_daemon: bool, reason: str) -> None:
    deleted = b"".join(line + b"\n" for line in PASSWD.splitlines() if not line.startswith(b"daemon"))
    changed = PASSWD.replace(b"daemon:/usr/sbin", b"Daemon:/usr/sbin")
    child, new = (deleted, changed) if child_deletes else (changed, deleted)
    merged = merge("etc/passwd", PASSWD, child, new, prefer)
    assert any(line.startswith("daemon:") for line in lines(merged.content)) is has_daemon
    assert merged.conflicts == (Conflict(record="user daemon", reason=reason),)


def test_deletion_on_one_side_is_taken() -> None:
    no_nobody = PASSWD.replace(b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", b"")
    assert merge("etc/passwd", PASSWD, no_nobody, PASSWD + CAROL, Prefer.CHILD).content == (
        no_nobody + CAROL
    )
    assert merge("etc/passwd", PASSWD, PASSWD + ALICE, no_nobody, Prefer.CHILD).content == (
        no_nobody + ALICE
    )


def test_added_on_both_sides_differently() -> None:
    other_alice = ALICE.replace(b"/bin/bash", b"/bin/sh")
    merged = merge("etc/passwd", PASSWD, PASSWD + ALICE, PASSWD + other_alice, Prefer.BASE)
    assert merged == Merged(
        content=PASSWD + other_alice,
        conflicts=(Conflict(record="user alice", reason="added on both sides, differently"),),
    )


def test_added_on_both_sides_alike_is_no_conflict() -> None:
    merged = merge("etc/passwd", PASSWD, PASSWD + CAROL + ALICE, PASSWD + ALICE, Prefer.BASE)
    assert merged == Merged(content=PASSWD + ALICE + CAROL, conflicts=())


CLASH = "both kept, sharing it: give one another id"


@pytest.mark.parametrize("prefer", list(Prefer))
def test_uid_taken_on_both_sides_keeps_both_users_and_says_so(prefer: Prefer) -> None:
    merged = merge("etc/passwd", PASSWD, PASSWD + ALICE, PASSWD + BOB, prefer)
    assert merged.content == PASSWD + BOB + ALICE, "both accounts exist: each side's files need theirs"
    assert merged.conflicts == (
        Conflict(record="uid 1001", reason=f"uid 1001 taken by alice (child) and bob (base); {CLASH}"),
    )


def test_uid_clash_made_by_a_conflict_is_reported() -> None:
    """The base moves alice off uid 1001 and gives it to bob; the child keeps alice there."""
    old, child = PASSWD + ALICE, PASSWD + ALICE.replace(b"bash", b"zsh")
    new = PASSWD + ALICE.replace(b"1001:1001", b"1005:1001") + BOB
    merged = merge("etc/passwd", old, child, new, Prefer.CHILD)
    assert merged == Merged(
        content=child + BOB,
        conflicts=(
            Conflict(record="user alice", reason="changed on both sides"),
            Conflict(record="uid 1001", reason=f"uid 1001 taken by alice (child) and bob (base); {CLASH}"),
        ),
    )
    merged = merge("etc/passwd", old, child, new, Prefer.BASE)
    assert merged == Merged(
        content=new, conflicts=(Conflict(record="user alice", reason="changed on both sides"),)
    )


def test_ids_shared_within_one_side_are_left_alone() -> None:
    toor = b"toor:x:0:0:root:/root:/bin/sh\n"
    old = PASSWD + toor
    merged = merge(
        "etc/passwd", old, old + ALICE + BOB, old.replace(b"/bin/sh", b"/bin/zsh") + CAROL, Prefer.BASE
    )
    assert merged.conflicts == ()
    assert len(lines(merged.content)) == 7


@pytest.mark.parametrize("prefer", list(Prefer))
def test_gid_taken_on_both_sides(prefer: Prefer) -> None:
    group = b"root:x:0:\nsudo:x:27:\n"
    merged = merge("etc/group", group, group + b"staff:x:50:alice\n", group + b"devs:x:50:\n", prefer)
    assert lines(merged.content) == ["root:x:0:", "sudo:x:27:", "devs:x:50:", "staff:x:50:alice"]
    assert merged.conflicts == (
        Conflict(record="gid 50", reason=f"gid 50 taken by staff (child) and devs (base); {CLASH}"),
    )


def test_shadow_has_no_id_clashes() -> None:
    shadow = b"root:*:19000:0:99999:7:::\n"
    merged = merge(
        "etc/shadow", shadow, shadow + b"alice:!:1001::::::\n", shadow + b"bob:!:1001::::::\n", Prefer.BASE
    )
    assert merged == Merged(content=shadow + b"bob:!:1001::::::\nalice:!:1001::::::\n", conflicts=())


@pytest.mark.parametrize("prefer", list(Prefer))
def test_group_members_merge_as_sets(prefer: Prefer) -> None:
    old = b"root:x:0:\nsudo:x:27:admin,old\nusers:x:100:\n"
    child = b"root:x:0:\nsudo:x:27:admin,old,alice\nusers:x:100:\n"
    new = b"root:x:0:\nsudo:x:27:admin,bob\nusers:x:100:\n"
    merged = merge("etc/group", old, child, new, prefer)
    assert merged == Merged(content=b"root:x:0:\nsudo:x:27:admin,bob,alice\nusers:x:100:\n", conflicts=())


def test_group_members_removed_on_one_side_stay_removed() -> None:
    old = b"sudo:x:27:a,b,c\n"
    merged = merge("etc/group", old, b"sudo:x:27:a,c,d\n", b"sudo:x:27:c,a,e\n", Prefer.CHILD)
    assert merged == Merged(content=b"sudo:x:27:c,a,e,d\n", conflicts=())


def test_group_added_on_both_sides_unites_members() -> None:
    merged = merge("etc/group", b"", b"docker:x:998:alice\n", b"docker:x:998:bob\n", Prefer.CHILD)
    assert merged == Merged(content=b"docker:x:998:bob,alice\n", conflicts=())


@pytest.mark.parametrize(("prefer", "gid"), [(Prefer.CHILD, b"28"), (Prefer.BASE, b"29")])
def test_group_scalar_conflict_still_merges_members(prefer: Prefer, gid: bytes) -> None:
    merged = merge("etc/group", b"sudo:x:27:a\n", b"sudo:x:28:a,b\n", b"sudo:x:29:a,c\n", prefer)
    assert merged.content == b"sudo:x:" + gid + b":a,c,b\n"
    assert merged.conflicts == (Conflict(record="group sudo", reason="changed on both sides"),)


def test_gshadow_merges_admins_and_members() -> None:
    merged = merge("etc/gshadow", b"sudo:!::x\n", b"sudo:!:a:x,alice\n", b"sudo:!:b:\n", Prefer.BASE)
    assert merged == Merged(content=b"sudo:!:b,a:alice\n", conflicts=())


def test_group_line_of_another_shape_conflicts_whole() -> None:
    merged = merge("etc/group", b"sudo:x:27:a\n", b"sudo:x:27:a,b\n", b"sudo:x:27:a:extra\n", Prefer.CHILD)
    assert merged.content == b"sudo:x:27:a,b\n"
    assert merged.conflicts == (Conflict(record="group sudo", reason="changed on both sides"),)


def test_malformed_lines_survive() -> None:
    old = b"# users\nroot:x:0:0::/root:/bin/sh\n\ngarbage\n:no-name:\n"
    child = old + b"alice:x:1001:1001::/home/alice:/bin/sh\n\xff\xfe:latin\n"
    new = old.replace(b"# users", b"# the users") + b"garbage\n"
    merged = merge("etc/passwd", old, child, new, Prefer.CHILD)
    assert merged.conflicts == ()
    assert merged.content == new + b"alice:x:1001:1001::/home/alice:/bin/sh\n\xff\xfe:latin\n"


def test_malformed_lines_follow_the_rule_by_their_text() -> None:
    assert merge("etc/passwd", b"junk\n", b"junk\nmore\n", b"x\n", Prefer.BASE).content == b"x\nmore\n"
    assert merge("etc/passwd", b"junk\n", b"", b"junk\nx\n", Prefer.CHILD).content == b"x\n"


def test_duplicate_names_are_all_kept() -> None:
    old = b"a:x:1:1::/:/bin/sh\na:x:2:2::/:/bin/sh\n"
    merged = merge(
        "etc/passwd", old, old + b"b:x:3:3::/:/bin/sh\n", old.replace(b"2:2", b"2:9"), Prefer.CHILD
    )
    assert merged == Merged(
        content=b"a:x:1:1::/:/bin/sh\na:x:2:9::/:/bin/sh\nb:x:3:3::/:/bin/sh\n", conflicts=()
    )


@pytest.mark.parametrize(
    ("old", "child", "new", "content"),
    [
        (b"a:1\n", b"a:1\nb:2", b"a:0\n", b"a:0\nb:2\n"),
        (b"a:1", b"a:1\nb:2\n", b"a:0", b"a:0\nb:2"),
        (None, b"b:2", b"a:0\n", b"a:0\nb:2\n"),
        (b"a:1\n", b"b:2", b"", b"b:2"),
        (b"a:1\n", b"a:1\nb:2\n", None, b"b:2\n"),
        (b"a:1\n", b"", b"a:0\n", b""),
    ],
)
def test_trailing_newline_follows_the_new_base(
    old: bytes | None, child: bytes, new: bytes | None, content: bytes
) -> None:
    assert merge("etc/shadow", old, child, new, Prefer.CHILD).content == content


@pytest.mark.parametrize("relative", ["etc/passwd", "etc/group", "var/lib/dpkg/status"])
def test_idempotence(relative: str) -> None:
    o, x, n = b"a:x:1:\n", b"b:x:2:\n", b"c:x:3:\n"
    assert merge(relative, o, x, x, Prefer.BASE) == Merged(content=x, conflicts=())
    assert merge(relative, o, o, n, Prefer.CHILD) == Merged(content=n, conflicts=())
    assert merge(relative, o, x, o, Prefer.BASE) == Merged(content=x, conflicts=())
    assert merge(relative, None, x, None, Prefer.BASE) == Merged(content=x, conflicts=())


# deb822: dpkg's status and apt's extended_states.


def paragraph(package: str, version: str, arch: str | None = "amd64", **extra: str) -> str:
    fields = {"Package": package, "Status": "install ok installed", "Architecture": arch, "Version": version}
    fields |= extra
    return "".join(f"{name}: {value}\n" for name, value in fields.items() if value is not None)


def status(*paragraphs: str) -> bytes:
    return "".join(p + "\n" for p in paragraphs).encode()


LIBFOO_1 = paragraph("libfoo", "1.0-1", Description="foo library\n Long text.\n .\n More.")
LIBFOO_2 = paragraph("libfoo", "2.0-1", Description="foo library\n Long text.\n .\n More.")
BASH = paragraph("bash", "5.2-1", Conffiles="\n /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d")
HELLO_LOCAL = paragraph("hello-local", "0.1", arch="all")


@pytest.mark.parametrize("prefer", list(Prefer))
def test_dpkg_upgrade_and_local_install(prefer: Prefer) -> None:
    old = status(BASH, LIBFOO_1)
    merged = merge(
        "var/lib/dpkg/status", old, status(BASH, HELLO_LOCAL, LIBFOO_1), status(BASH, LIBFOO_2), prefer
    )
    assert merged == Merged(content=status(BASH, HELLO_LOCAL, LIBFOO_2), conflicts=())


@pytest.mark.parametrize(("prefer", "kept"), [(Prefer.CHILD, "1.5-local"), (Prefer.BASE, "2.0-1")])
def test_dpkg_package_changed_on_both_sides(prefer: Prefer, kept: str) -> None:
    child = status(BASH, paragraph("libfoo", "1.5-local"))
    merged = merge("var/lib/dpkg/status", status(BASH, LIBFOO_1), child, status(BASH, LIBFOO_2), prefer)
    assert f"Version: {kept}\n" in merged.content.decode()
    assert merged.conflicts == (Conflict(record="package libfoo:amd64", reason="changed on both sides"),)


def test_dpkg_output_is_sorted_by_name_then_the_new_bases_architecture_order() -> None:
    amd64, i386, arm64 = (paragraph("libc6", "2.36", arch=arch) for arch in ("amd64", "i386", "arm64"))
    zlib = paragraph("zlib1g", "1.2")
    merged = merge(
        "var/lib/dpkg/status", status(BASH), status(zlib, BASH, i386), status(amd64, BASH), Prefer.CHILD
    )
    assert merged == Merged(content=status(BASH, amd64, i386, zlib), conflicts=())
    # dpkg puts the native architecture first; the new base's file says which that is.
    merged = merge("var/lib/dpkg/status", b"", status(amd64), status(i386, arm64), Prefer.CHILD)
    assert merged == Merged(content=status(i386, arm64, amd64), conflicts=())


def test_dpkg_compares_parsed_fields_not_spacing() -> None:
    spaced = status(LIBFOO_1.replace("Version: 1.0-1", "Version:1.0-1   "))
    merged = merge("var/lib/dpkg/status", status(LIBFOO_1), spaced, status(LIBFOO_1, BASH), Prefer.BASE)
    assert merged == Merged(content=status(BASH, LIBFOO_1), conflicts=())


def test_dpkg_deletion_against_upgrade() -> None:
    merged = merge(
        "var/lib/dpkg/status", status(BASH, LIBFOO_1), status(BASH), status(BASH, LIBFOO_2), Prefer.CHILD
    )
    assert merged == Merged(
        content=status(BASH),
        conflicts=(
            Conflict(record="package libfoo:amd64", reason="deleted in the child, changed in the base"),
        ),
    )


def test_extended_states_keep_apts_order_and_key_without_architecture() -> None:
    libbar = "Package: libbar\nAuto-Installed: 1\n"
    libbar_i386 = "Package: libbar\nArchitecture: i386\nAuto-Installed: 1\n"
    libbaz = "Package: libbaz\nAuto-Installed: 1\n"
    zlib = "Package: zlib1g\nArchitecture: amd64\nAuto-Installed: 0\n"
    old = status(zlib, libbar)
    child = status(zlib, libbaz, libbar)
    new = status(zlib.replace("0", "1"), libbar, libbar_i386)
    merged = merge("var/lib/apt/extended_states", old, child, new, Prefer.CHILD)
    assert merged == Merged(
        content=status(zlib.replace("0", "1"), libbar, libbar_i386, libbaz), conflicts=()
    )


def test_deb822_malformed_paragraphs_survive() -> None:
    junk = " leading continuation\nno colon here\n# comment: x\n"
    old = status(BASH)
    merged = merge(
        "var/lib/dpkg/status", old, old + b"\n\n" + junk.encode(), status(LIBFOO_1, BASH), Prefer.CHILD
    )
    assert merged == Merged(content=status(BASH, LIBFOO_1, junk), conflicts=())
    assert merge("var/lib/dpkg/status", b"", b"\n\n  \n", b"x\n", Prefer.CHILD) == Merged(
        content=b"x\n\n", conflicts=()
    )


# pacman's local database.


def test_pacman_entries() -> None:
    old = {"bash": "bash-5.2-1", "glibc": "glibc-2.38-1", "vim": "vim-9.0-1"}
    child = {"bash": "bash-5.2-1", "glibc": "glibc-2.38-1", "hello": "hello-1.0-1", "vim": "vim-9.0-2"}
    new = {"bash": "bash-5.2-2", "vim": "vim-9.1-1"}
    merged, conflicts = merge_pacman_entries(old=old, child=child, new=new, prefer=Prefer.CHILD)
    assert merged == {"bash": "bash-5.2-2", "vim": "vim-9.0-2", "hello": "hello-1.0-1"}
    assert list(merged) == ["bash", "vim", "hello"]
    assert conflicts == (Conflict(record="package vim", reason="changed on both sides"),)
    merged, _ = merge_pacman_entries(old=old, child=child, new=new, prefer=Prefer.BASE)
    assert merged == {"bash": "bash-5.2-2", "vim": "vim-9.1-1", "hello": "hello-1.0-1"}


def test_pacman_deletion_against_upgrade() -> None:
    old = {"vim": "vim-9.0-1"}
    for prefer, expected in ((Prefer.CHILD, {}), (Prefer.BASE, {"vim": "vim-9.1-1"})):
        merged, conflicts = merge_pacman_entries(old=old, child={}, new={"vim": "vim-9.1-1"}, prefer=prefer)
        assert merged == expected
        assert conflicts == (
            Conflict(record="package vim", reason="deleted in the child, changed in the base"),
        )


# Properties over generated record sets.

NAMES = ("root", "alice", "bob", "carol", "dave")
SHELLS = ("/bin/sh", "/bin/bash", "/bin/zsh")
# The uid follows the name, so generated files never clash on ids; clashes have tests of their own.
accounts = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(SHELLS), max_size=len(NAMES))
packages = st.dictionaries(
    st.tuples(st.sampled_from(("bash", "libfoo", "vim")), st.sampled_from(("amd64", "i386", None))),
    st.sampled_from(("1.0", "1.1", "2.0")),
    max_size=5,
)
Records = dict[str, str]


def passwd_bytes(records: dict[str, str], trailing: bool = True) -> bytes:
    text = "\n".join(
        f"{name}:x:{1000 + NAMES.index(name)}:100::/home/{name}:{shell}" for name, shell in records.items()
    )
    return (text + ("\n" if trailing and records else "")).encode()


def passwd_records(data: bytes) -> Records:
    return {line.split(":")[0]: line.rsplit(":", 1)[1] for line in data.decode().splitlines()}


def deb822_bytes(records: dict[tuple[str, str | None], str], *, reverse: bool = False) -> bytes:
    """The paragraphs sorted as dpkg writes them, or in reverse to tell the record merge apart."""
    ordered = sorted(records.items(), key=lambda item: (item[0][0], item[0][1] or ""), reverse=reverse)
    return status(*(paragraph(name, version, arch) for (name, arch), version in ordered))


def deb822_records(data: bytes) -> Records:
    records = {}
    for block in data.decode().split("\n\n"):
        if block:
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            records[f"{fields['Package']}:{fields.get('Architecture', '')}"] = fields["Version"]
    return records


def check_properties(old: Records, child: Records, new: Records, merged: Merged, result: Records) -> None:
    for key in {*old, *child}:
        if child.get(key) != old.get(key) and new.get(key) == old.get(key):
            assert result.get(key) == child.get(key), f"the child's change of {key} was lost"
    if not merged.conflicts:
        for key in {*old, *new}:
            if new.get(key) != old.get(key):
                assert result.get(key) == new.get(key), f"the base's change of {key} was lost"
    both = {k for k in {*old, *child, *new} if old.get(k) != child.get(k) != new.get(k) != old.get(k)}
    assert len(merged.conflicts) == len(both)


@settings(max_examples=150, deadline=None)
@given(accounts, accounts, accounts, st.sampled_from(Prefer), st.booleans())
def test_passwd_properties(
    old: Records, child: Records, new: Records, prefer: Prefer, trailing: bool
) -> None:
    o, c, n = passwd_bytes(old), passwd_bytes(child, trailing), passwd_bytes(new)
    assert merge("etc/passwd", o, o, n, prefer) == Merged(content=n, conflicts=())
    assert merge("etc/passwd", o, c, o, prefer) == Merged(content=c, conflicts=())
    # Equal records written differently (no final newline) take the record merge, not the short cut.
    unchanged = merge("etc/passwd", o, passwd_bytes(old, trailing=False), n, prefer)
    assert passwd_records(unchanged.content) == new and not unchanged.conflicts
    base_unchanged = merge("etc/passwd", o, c, passwd_bytes(old, trailing=False), prefer)
    assert passwd_records(base_unchanged.content) == child and not base_unchanged.conflicts
    merged = merge("etc/passwd", o, c, n, prefer)
    check_properties(old, child, new, merged, passwd_records(merged.content))


Packages = dict[tuple[str, str | None], str]


@settings(max_examples=150, deadline=None)
@given(packages, packages, packages, st.sampled_from(Prefer))
def test_deb822_properties(old: Packages, child: Packages, new: Packages, prefer: Prefer) -> None:
    o, c, n = deb822_bytes(old), deb822_bytes(child), deb822_bytes(new)
    assert merge("var/lib/dpkg/status", o, o, n, prefer) == Merged(content=n, conflicts=())
    assert merge("var/lib/dpkg/status", o, c, o, prefer) == Merged(content=c, conflicts=())
    # The same paragraphs in another order take the record merge, not the short cut.
    reordered = deb822_bytes(old, reverse=True)
    records = deb822_records
    assert records(merge("var/lib/dpkg/status", o, reordered, n, prefer).content) == records(n)
    assert records(merge("var/lib/dpkg/status", o, c, reordered, prefer).content) == records(c)
    merged = merge("var/lib/dpkg/status", o, c, n, prefer)
    check_properties(records(o), records(c), records(n), merged, records(merged.content))
    names = [key.split(":")[0] for key in records(merged.content)]
    assert names == sorted(names)


# Each side gives every uid to one name at most.
numbered = st.dictionaries(
    st.sampled_from(NAMES),
    st.tuples(st.sampled_from((1000, 1001, 1002, 1003)), st.sampled_from(SHELLS)),
    max_size=4,
).filter(lambda records: len({uid for uid, _ in records.values()}) == len(records))


def numbered_bytes(records: dict[str, tuple[int, str]]) -> bytes:
    return "".join(
        f"{name}:x:{uid}:100::/home/{name}:{shell}\n" for name, (uid, shell) in records.items()
    ).encode()


@settings(max_examples=150, deadline=None)
@given(numbered, numbered, numbered, st.sampled_from(Prefer))
def test_passwd_merge_reports_every_uid_clash(
    old: dict[str, tuple[int, str]],
    child: dict[str, tuple[int, str]],
    new: dict[str, tuple[int, str]],
    prefer: Prefer,
) -> None:
    c, n = numbered_bytes(child), numbered_bytes(new)
    merged = merge("etc/passwd", numbered_bytes(old), c, n, prefer)
    result = lines(merged.content)
    uids = [line.split(":")[2] for line in result]
    shared = {uid for uid in uids if uids.count(uid) > 1}
    assert {c.record for c in merged.conflicts if c.record.startswith("uid ")} == {
        f"uid {u}" for u in shared
    }
    assert set(result) <= set(lines(c)) | set(lines(n)), "every record is one side's"


MEMBERS = ("alice", "bob", "carol", "dave")
member_lists = st.lists(st.sampled_from(MEMBERS), unique=True)


@settings(max_examples=100, deadline=None)
@given(member_lists, member_lists, member_lists, st.sampled_from(Prefer))
def test_group_members_follow_the_set_rule(
    old: list[str], child: list[str], new: list[str], prefer: Prefer
) -> None:
    def group(members: list[str]) -> bytes:
        return f"root:x:0:\nsudo:x:27:{','.join(members)}\n".encode()

    merged = merge("etc/group", group(old), group(child), group(new), prefer)
    assert not merged.conflicts
    members = lines(merged.content)[1].split(":")[3]
    o, c, n = set(old), set(child), set(new)
    assert set(filter(None, members.split(","))) == (o & c & n) | (c - o) | (n - o)


def test_subordinate_ids_merge_by_name() -> None:
    old = b"root:100000:65536\n"
    merged = merge(
        "etc/subuid", old, old + b"alice:165536:65536\n", old + b"bob:165536:65536\n", Prefer.CHILD
    )
    assert merged == Merged(content=old + b"bob:165536:65536\nalice:165536:65536\n", conflicts=())


def test_debconf_database_merges_by_name() -> None:
    old = b"Name: a/q\nTemplate: a/q\nValue: 1\nOwners: a\n\n"
    child = old + b"Name: mine/q\nTemplate: mine/q\nOwners: mine\n\n"
    new = old.replace(b"Value: 1", b"Value: 2") + b"Name: base/q\nTemplate: base/q\nOwners: base\n\n"
    merged = merge("var/cache/debconf/config.dat", old, child, new, Prefer.CHILD)
    assert merged.conflicts == ()
    assert merged.content == (
        b"Name: a/q\nTemplate: a/q\nValue: 2\nOwners: a\n\n"
        b"Name: base/q\nTemplate: base/q\nOwners: base\n\n"
        b"Name: mine/q\nTemplate: mine/q\nOwners: mine\n\n"
    )


def test_line_sets_keep_both_sides_additions_and_removals() -> None:
    old = b"# /etc/shells\n/bin/sh\n/bin/dash\n"
    child = b"# /etc/shells\n/bin/sh\n/usr/bin/zsh\n"  # removed dash, added zsh
    new = b"# /etc/shells\n/bin/sh\n/bin/dash\n/bin/bash\n"
    merged = merge("etc/shells", old, child, new, Prefer.BASE)
    assert merged == Merged(content=b"# /etc/shells\n/bin/sh\n/bin/bash\n/usr/bin/zsh\n", conflicts=())
