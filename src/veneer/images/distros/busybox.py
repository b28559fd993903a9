"""Busybox images: the built-in default, made in an instant and offline from the host's busybox-static.

A tree holds bin/busybox, one symlink per applet, an init that boots under `systemd-nspawn --boot` and
powers off on the signals of busybox's and systemd's (busybox init behind a shell that passes them on,
see INIT), and minimal account files. There is no package manager and no locale or time zone data, and
users are added by editing passwd, group and shadow directly (there is no useradd): the pure editing
functions live here and are unit-tested.

Imports `veneer.images.distros` for the base class; must not import `veneer.images.bootstrap`.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from veneer.errors import ImageError, UsageError
from veneer.images.distros import (
    CommandRunner,
    DistributionInstaller,
    missing_groups,
    read_tree_text,
    tree_path,
    write_tree_text,
)
from veneer.util.proc import run, which
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install busybox-static"

# Busybox init reads this at boot. Under nspawn it runs in a container whose /proc, /sys, /dev, /dev/pts,
# /dev/shm, /run and /tmp nspawn has mounted already, and whose hostname nspawn has set, so there is no
# sysinit action at all.
#
# Busybox init halts on SIGUSR1, powers off on SIGUSR2 and reboots on SIGTERM; SIGINT runs ctrlaltdel.
# Its poweroff ends in reboot(2) inside the PID namespace, which the kernel turns into the death of PID 1
# by SIGINT: nspawn reads that as a poweroff and exits 0 (a reboot, SIGHUP, exits 133).
#
# The console shell has no id field, so it inherits init's console. With "console::" init would open
# /dev/console for it, which nspawn's pipe console mode does not provide: the shell never starts there.
INITTAB = """\
# /etc/inittab for busybox init, booted by systemd-nspawn --boot (made by veneer).
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""

# /sbin/init: busybox's shell as PID 1, with busybox init (as `linuxrc`, the name under which it runs as
# another PID) doing the work. The init of a PID namespace gets only the signals it has a handler for, and
# busybox init has none for those systemd sends a container's init (SIGRTMIN+3 halt, +4 poweroff, +5
# reboot), so `machinectl poweroff` did nothing to a busybox machine whose PID 1 it was. This PID 1 traps
# them by number (busybox's shell knows no RTMIN names; glibc's SIGRTMIN, systemd's, is 34) and passes
# them on as busybox init's own: a halt is a poweroff (a container has no halted state), SIGINT is
# ctrl-alt-del (`machinectl reboot`). busybox `poweroff`, `halt` and `reboot` signal PID 1 and are passed
# on too. busybox init's poweroff kills every process but PID 1, then calls reboot(2), which ends PID 1.
#
# A signal is held back until busybox init takes them (its /proc status says so), as the default action
# of one that came earlier would end busybox init. (Waiting for its first child instead missed a signal
# sent while the console shell was being respawned: the shell of a closed console lives milliseconds.)
# A background job of a script gets /dev/null as its input, unless redirected: the console, saved in fd 3,
# is given back. (It also ignores SIGINT and SIGQUIT, for which busybox init sets handlers of its own and
# which it resets for the console shell.) Waiting, the shell reaps every child, so the orphans the machine's
# processes leave to PID 1 too. Should busybox init end otherwise (killed), PID 1 ends with it: the
# machine powers off.
INIT = """\
#!/bin/sh
# /sbin/init of a busybox image made by veneer: see veneer/images/distros/busybox.py.
pass() {
    tries=250  # 5 s at most: past that, the signal goes as it is
    while [ "$tries" -gt 0 ] && unready; do
        usleep 20000
        tries=$((tries - 1))
    done
    kill -"$1" "$init" 2>/dev/null
}
# Succeeds while busybox init runs but does not take SIGUSR2 yet: it blocks its signals (SigBlk, bit 12)
# and takes them with sigtimedwait, which unblocks them while it waits (its wchan).
unready() {
    taken=0
    while read -r key mask; do
        case $key in SigBlk: | SigCgt:) taken=$((taken | 0x$mask)) ;; esac
    done < /proc/$init/status || return 1
    [ $((taken & 0x800)) -eq 0 ] || return 1
    read -r waiting < /proc/$init/wchan
    case $waiting in *sigtimedwait*) return 1 ;; esac
} 2>/dev/null
trap 'pass USR2' USR2 37 38
trap 'pass USR1' USR1
trap 'pass TERM' TERM 39
trap 'pass INT' INT
trap 'pass HUP' HUP
exec 3<&0
(exec -a linuxrc /bin/busybox) 0<&3 3<&- &
init=$!
exec 3<&-
while kill -0 "$init" 2>/dev/null; do
    wait "$init"
done
"""
INIT_PATH = "usr/lib/veneer/init"

# systemd-nspawn --user looks the user up inside the machine with "getent passwd NAME" and "getent
# initgroups NAME" (nspawn-setuid.c), and busybox has no getent applet.
GETENT = """\
#!/bin/sh
# getent for busybox images (made by veneer): passwd, group and initgroups from the files in /etc.
db=$1 key=$2
case $db in
passwd|group)
    awk -F: -v k="$key" '$1 == k || $3 == k { print; found = 1; exit }
        END { exit !found ? 2 : 0 }' "/etc/$db" ;;
initgroups)
    awk -F: -v k="$key" '
        FILENAME == "/etc/passwd" && $1 == k { gid = $4 }
        FILENAME == "/etc/group" {
            n = split($4, members, ",")
            for (i = 1; i <= n; i++) if (members[i] == k) more = more " " $3
        }
        END { if (gid == "") exit 2; print k " " gid more }' /etc/passwd /etc/group ;;
*)
    echo "getent: database '$db' is not supported here" >&2; exit 1 ;;
esac
"""

OS_RELEASE = """\
NAME="BusyBox"
ID=busybox
PRETTY_NAME="BusyBox (veneer)"
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
tty:x:5:
nogroup:x:65534:
"""

# '*' is no valid password hash: nobody logs in with a password until one is set.
SHADOW = """\
root:*::0:99999:7:::
nobody:*::0:99999:7:::
"""

# Directory, mode. /tmp is sticky and world-writable, root's home private.
DIRECTORIES = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("usr/lib", 0o755),
    ("etc", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
)

# Applets never linked: linuxrc is an initrd's entry point, bin/busybox is the binary itself.
_SKIPPED_APPLETS = frozenset({"linuxrc", "bin/busybox"})

_PT_INTERP = 3
_FIRST_USER_ID = 1000
_LAST_USER_ID = 59999


class BusyboxInstaller(DistributionInstaller):
    os_ids: ClassVar[tuple[str, ...]] = ("busybox",)

    @classmethod
    def pretty_name(cls) -> str:
        return "BusyBox"

    @classmethod
    def install_packages(
        cls, tree: Path, packages: Sequence[str], *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        raise UsageError(
            "Busybox images have no package manager",
            hint="Build the image with --debootstrap or --pacstrap to install packages.",
        )

    @classmethod
    def setup_locale(
        cls, tree: Path, locale: str, *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        raise UsageError(
            "Busybox images have no locale support",
            hint="Leave out --locale, or build the image with --debootstrap or --pacstrap.",
        )

    @classmethod
    def add_user(
        cls, tree: Path, *, name: str, group: str | None, groups: Sequence[str], runner: CommandRunner
    ) -> None:
        files = AccountFiles(
            passwd=read_tree_text(tree, "etc/passwd") or "",
            group=read_tree_text(tree, "etc/group") or "",
            shadow=read_tree_text(tree, "etc/shadow") or "",
        )
        files, uid, gid = add_account(files, name=name, group=group, groups=groups)
        save_account_files(tree, files)
        home = tree_path(tree, f"home/{name}", create_parents=True)
        if not os.path.lexists(home):
            home.mkdir(mode=0o700)
            os.chown(home, uid, gid)


def find_busybox() -> Path:
    """The host's statically linked busybox; `ImageError` with an install hint if there is none."""
    candidates = [which("busybox"), "/bin/busybox", "/usr/bin/busybox"]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate is None or Path(candidate) in seen or not os.access(candidate, os.X_OK):
            continue
        seen.append(Path(candidate))
        with open(candidate, "rb") as f:
            header = f.read(64 * 1024)
        if is_static_elf(header):
            return Path(candidate)
    if seen:
        raise ImageError(
            f"Busybox at '{seen[0]}' is dynamically linked and cannot run inside an image",
            hint=INSTALL_HINT,
        )
    raise ImageError("No busybox found on this host", hint=INSTALL_HINT)


def is_static_elf(header: bytes) -> bool:
    """Whether an ELF executable (its first bytes, program headers included) has no dynamic loader.

    A PT_INTERP program header names the loader; static and static-pie executables have none.
    """
    if len(header) < 52 or header[:4] != b"\x7fELF":
        return False
    is_64 = header[4] == 2
    order = "<" if header[5] == 1 else ">"
    if is_64:
        if len(header) < 64:
            return False
        phoff, phentsize, phnum = (
            struct.unpack_from(order + "Q", header, 32)[0],
            *struct.unpack_from(order + "HH", header, 54),
        )
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(order + "I", header, 28)[0],
            *struct.unpack_from(order + "HH", header, 42),
        )
    if phnum == 0 or phentsize < 4:
        return False
    for i in range(phnum):
        offset = phoff + i * phentsize
        if offset + 4 > len(header):
            return False
        if struct.unpack_from(order + "I", header, offset)[0] == _PT_INTERP:
            return False
    return True


def applet_links(listing: str) -> list[tuple[str, str]]:
    """(link path, relative target) for each applet in `busybox --list-full` output."""
    links = []
    for line in listing.splitlines():
        path = line.strip().strip("/")
        if not path or path in _SKIPPED_APPLETS or ".." in path.split("/"):
            continue
        target = os.path.relpath("bin/busybox", start=os.path.dirname(path) or ".")
        links.append((path, target))
    return links


def bootstrap(tree: Path, *, progress: Progress = QUIET) -> None:
    """Fill the empty directory `tree` with a bootable busybox system."""
    busybox = find_busybox()
    logger.debug("Creating a busybox tree from '%s'", busybox)
    progress.phase(f"Creating a busybox tree from '{busybox}'")
    for directory, mode in DIRECTORIES:
        (tree / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(tree / directory, mode)
    shutil.copyfile(busybox, tree / "bin/busybox")
    os.chmod(tree / "bin/busybox", 0o755)
    listing = run([busybox, "--list-full"], capture=True).stdout
    for relative, target in applet_links(listing):
        link = tree / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            link.symlink_to(target)
    write_tree_text(tree, "usr/lib/os-release", OS_RELEASE)
    # nspawn makes this link itself when it is missing (systemd's base-filesystem.c), which would write
    # it into every machine's upper dir.
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    write_tree_text(tree, "etc/inittab", INITTAB)
    write_tree_text(tree, INIT_PATH, INIT, mode=0o755)
    init = tree / "sbin/init"
    init.unlink()
    init.symlink_to(os.path.relpath(INIT_PATH, "sbin"))
    write_tree_text(tree, "usr/bin/getent", GETENT, mode=0o755)
    save_account_files(tree, AccountFiles(passwd=PASSWD, group=GROUP, shadow=SHADOW))


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountFiles:
    """The text of /etc/passwd, /etc/group and /etc/shadow."""

    passwd: str
    group: str
    shadow: str


def save_account_files(tree: Path, files: AccountFiles) -> None:
    """Write the account files into the tree (shadow readable by root only)."""
    write_tree_text(tree, "etc/passwd", files.passwd)
    write_tree_text(tree, "etc/group", files.group)
    write_tree_text(tree, "etc/shadow", files.shadow, mode=0o600)


def _records(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _append(text: str, record: Sequence[str]) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ":".join(record) + "\n"


def next_free_id(used: set[int], *, prefer: int | None = None) -> int:
    """The lowest id in the regular user range not in `used` (`prefer` first, if free)."""
    if prefer is not None and prefer not in used:
        return prefer
    for candidate in range(_FIRST_USER_ID, _LAST_USER_ID + 1):
        if candidate not in used:
            return candidate
    raise ImageError("No free user or group id left in the image")


def add_account(
    files: AccountFiles, *, name: str, group: str | None, groups: Sequence[str]
) -> tuple[AccountFiles, int, int]:
    """Add user `name` to the account files; return them with the new user's uid and primary gid.

    Without `group` the user gets a group of its own, as useradd's USERGROUPS_ENAB does; missing groups
    are created. Supplementary `groups` list the user as a member.
    """
    passwd, group_records = _records(files.passwd), _records(files.group)
    if any(r[0] == name for r in passwd):
        raise ImageError(f"Cannot add user '{name}': it exists already in the image")
    used_uids = {int(r[2]) for r in passwd if len(r) > 2 and r[2].isdigit()}
    used_gids = {int(r[2]) for r in group_records if len(r) > 2 and r[2].isdigit()}
    gids = {r[0]: int(r[2]) for r in group_records if len(r) > 2 and r[2].isdigit()}
    group_text = files.group
    uid = next_free_id(used_uids | used_gids)
    primary = group or name
    if not group and name in gids:
        raise ImageError(
            f"Cannot add user '{name}': a group of that name exists already", hint=f"Use {name}:{name}."
        )
    for missing in missing_groups(set(gids), group=primary, groups=groups):
        gid = next_free_id(used_gids, prefer=uid if missing == name else None)
        used_gids.add(gid)
        gids[missing] = gid
        group_text = _append(group_text, [missing, "x", str(gid), ""])
    lines = []
    for line in group_text.splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[0] in groups and fields[0] != primary:
            members = [m for m in fields[3].split(",") if m]
            if name not in members:
                fields[3] = ",".join([*members, name])
        lines.append(":".join(fields))
    gid = gids[primary]
    files = AccountFiles(
        passwd=_append(files.passwd, [name, "x", str(uid), str(gid), "", f"/home/{name}", "/bin/sh"]),
        group="".join(f"{line}\n" for line in lines),
        shadow=_append(files.shadow, [name, "!", "", "0", "99999", "7", "", "", ""]),
    )
    return files, uid, gid
