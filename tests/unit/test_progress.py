"""Progress: the parsers of the package managers' lines, and how the command line draws reports."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from veneer.cli.progress import PhaseLines, TerminalLine, progress_text
from veneer.errors import CommandFailed
from veneer.images.distros.arch import PacmanProgress
from veneer.images.distros.debian import AptProgress, DebootstrapProgress
from veneer.util import proc
from veneer.util.progress import Progress, Unit


class Recorder(Progress):
    def __init__(self) -> None:
        self.reports: list[tuple[object, ...]] = []

    def phase(self, text: str, *, total: int | None = None, unit: Unit = Unit.BYTES) -> None:
        self.reports.append(("phase", text, total, unit))

    def advance(self, done: int, *, item: str = "") -> None:
        self.reports.append(("advance", done, item))


# As debootstrap bookworm printed them (first stage, then second stage), shortened.
DEBOOTSTRAP_LINES = """\
I: Retrieving InRelease
I: Checking Release signature
I: Retrieving Packages
I: Validating Packages
I: Resolving dependencies of required packages...
I: Checking component main on http://deb.debian.org/debian...
I: Retrieving adduser 3.134
I: Validating adduser 3.134
I: Retrieving bsdutils 1:2.38.1-5+deb12u3
I: Validating bsdutils 1:2.38.1-5+deb12u3
I: Retrieving dbus 1.14.10-1~deb12u1
I: Validating dbus 1.14.10-1~deb12u1
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting adduser...
I: Extracting bsdutils...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking adduser...
I: Unpacking bsdutils:amd64...
I: Configuring required packages...
I: Configuring bsdutils:amd64...
I: Unpacking the base system...
I: Unpacking dbus...
I: Configuring the base system...
I: Configuring adduser...
I: Configuring dbus...
I: Base system installed successfully.
"""


def test_debootstrap_lines_become_phases_with_package_counts(tmp_path: Path) -> None:
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap/required").write_text("adduser bsdutils\n")
    (tmp_path / "debootstrap/base").write_text("dbus\n")
    recorder = Recorder()
    parse = DebootstrapProgress(recorder, tmp_path)
    for line in DEBOOTSTRAP_LINES.splitlines():
        parse(line)
    packages = Unit.PACKAGES
    assert recorder.reports == [
        ("phase", "Retrieving packages", None, packages),
        ("advance", 1, "adduser"),
        ("advance", 2, "bsdutils"),
        ("advance", 3, "dbus"),
        ("phase", "Extracting packages", 2, packages),
        ("advance", 1, "adduser"),
        ("advance", 2, "bsdutils"),
        ("phase", "Unpacking packages", 3, packages),
        ("advance", 1, "adduser"),
        ("advance", 2, "bsdutils"),
        ("phase", "Configuring packages", 3, packages),
        ("advance", 1, "bsdutils"),
        ("phase", "Unpacking packages", 3, packages),
        ("advance", 3, "dbus"),
        ("phase", "Configuring packages", 3, packages),
        ("advance", 2, "adduser"),
        ("advance", 3, "dbus"),
    ]


def test_apt_lines_count_the_packages_set_up() -> None:
    recorder = Recorder()
    parse = AptProgress(recorder, "Installing hello")
    for line in (
        "Reading package lists...",
        "0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.",
        "Unpacking libfoo (1.0) ...",
        "Setting up libfoo (1.0) ...",
        "Setting up hello (2.10-3) ...",
    ):
        parse(line)
    assert recorder.reports == [
        ("phase", "Installing hello", 2, Unit.PACKAGES),
        ("advance", 1, "libfoo"),
        ("advance", 2, "hello"),
    ]


def test_pacman_lines_count_out_of_their_total() -> None:
    recorder = Recorder()
    parse = PacmanProgress(recorder, "Bootstrapping Arch Linux")
    for line in (
        "(1/2) checking keys in keyring",
        "(1/2) installing filesystem",
        "( 2/2) installing bash...",
    ):
        parse(line)
    assert recorder.reports == [
        ("phase", "Bootstrapping Arch Linux", 2, Unit.PACKAGES),
        ("advance", 1, "filesystem"),
        ("advance", 2, "bash"),
    ]


@pytest.mark.parametrize(
    ("unit", "done", "total", "item", "text"),
    [
        (Unit.BYTES, 3 << 20, 12 << 20, "", "Applying layer 1/2: 3.0 MiB of 12.0 MiB (25%)"),
        (Unit.BYTES, 5 << 20, None, "", "Applying layer 1/2: 5.0 MiB"),
        (Unit.PACKAGES, 12, None, "bash", "Applying layer 1/2: 12 packages bash"),
        (Unit.PACKAGES, 9, 8, "", "Applying layer 1/2: 9 of 8 (100%)"),
    ],
)
def test_progress_text(unit: Unit, done: int, total: int | None, item: str, text: str) -> None:
    assert progress_text("Applying layer 1/2", unit, done, total, item) == text


def test_a_narrow_terminal_keeps_the_counts() -> None:
    text = progress_text("Configuring packages", Unit.PACKAGES, 3, 90, "libc-bin", width=30)
    assert text == "Configuring pac…: 3 of 90 (3%)"


def test_a_pipe_gets_each_phase_once_and_no_counts() -> None:
    out = io.StringIO()
    lines = PhaseLines(out)
    for phase in ("Unpacking packages", "Configuring packages", "Unpacking packages"):
        lines.phase(phase, total=3, unit=Unit.PACKAGES)
        lines.advance(2, item="bash")
    assert out.getvalue() == "Unpacking packages\nConfiguring packages\n"


def test_a_terminal_line_is_rewritten_in_place_and_cleared() -> None:
    out = io.StringIO()
    line = TerminalLine(out)
    line.phase("Writing 'x.tar'", total=100)
    line.advance(100)  # the end of a phase is always drawn
    line.clear()
    assert out.getvalue() == (
        "\rWriting 'x.tar'...\rWriting 'x.tar': 100 B of 100 B (100%)"
        "\r" + " " * len("Writing 'x.tar': 100 B of 100 B (100%)") + "\r"
    )
    assert "\n" not in out.getvalue()


def test_a_followed_command_passes_its_lines_and_keeps_its_last_ones_for_errors() -> None:
    seen: list[str] = []
    script = "echo one; echo two >&2; echo 'E: three'; exit 3"
    with pytest.raises(CommandFailed) as failed:
        proc.run(["sh", "-c", script], on_line=seen.append)
    assert seen == ["one", "two", "E: three"]
    assert failed.value.message.endswith("E: three")


def test_extracting_counts_the_bytes_of_a_file_and_reads_a_pipe_without_them(tmp_path: Path) -> None:
    import tarfile
    import threading

    from veneer.images.transfer import extract_tar

    archive = tmp_path / "a.tar"
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    with tarfile.open(archive, "w") as tf:
        tf.add(tmp_path / "f", arcname="f")
    recorder = Recorder()
    (tmp_path / "file").mkdir()
    extract_tar(archive, tmp_path / "file", progress=recorder)
    assert recorder.reports[0] == ("phase", "Extracting 'a.tar'", archive.stat().st_size, Unit.BYTES)
    done = [int(str(report[1])) for report in recorder.reports[1:]]
    assert done == sorted(done) and 100_000 < done[-1] <= archive.stat().st_size
    # A pipe (as `veneer cp` extracts from) cannot tell where it is: no byte counts, no failure.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(archive.read_bytes()))
    writer.start()
    (tmp_path / "piped").mkdir()
    extract_tar(fifo, tmp_path / "piped", progress=Recorder())
    writer.join()
    assert (tmp_path / "piped/f").read_bytes() == b"x" * 100_000
