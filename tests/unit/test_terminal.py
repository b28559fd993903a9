"""util/terminal.py: what a machine writes is shown, never obeyed, by the user's terminal."""

from __future__ import annotations

import pytest

from veneer.util.terminal import TerminalText, terminal_text


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"plain text\n\tindented\n", "plain text\n\tindented\n"),
        (b"\x1b]0;pwned\x07", "^[]0;pwned^G"),
        (b"\x1b[2J\x1b[6n", "^[[2J^[[6n"),
        (b"\x9bJ", "\\x9bJ"),  # a lone C1 byte (CSI in 8-bit mode) is not UTF-8
        ("\u009bK".encode(), "\\x9bK"),  # the same control as UTF-8
        (b"\x00\x7f\x08", "^@^?^H"),
        (b"line\r\nnext\r\r\n", "line\nnext\n"),
        (b"secret\rcover", "secret\ncover"),  # a lone CR cannot overwrite what is shown
        (b"ends in CR\r", "ends in CR\n"),
        ("ünïcode ✓\n".encode(), "ünïcode ✓\n"),
        (b"\xff\xfe", "\\xff\\xfe"),
    ],
)
def test_terminal_text(data: bytes, shown: str) -> None:
    assert terminal_text(data) == shown


def test_chunks_split_anywhere_give_the_same_text() -> None:
    data = "a\r\nb\x1b[1m ✓ \u009b c\rd\n".encode()
    for cut in range(len(data) + 1):
        stream = TerminalText()
        assert stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.finish() == terminal_text(data)
