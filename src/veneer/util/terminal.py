"""Text from a machine made harmless for the user's terminal.

A machine writes what it likes to its console; a terminal that is shown those bytes obeys the control
sequences in them: it retitles the window, clears the screen, answers queries (`ESC [6n`) into the
user's input. `TerminalText` turns every control character except newline and tab into visible text
(`^[`, `\\x9b`) and keeps the rest, so nothing is hidden and nothing is obeyed. Stdlib only.
"""

from __future__ import annotations

import codecs

_KEPT = frozenset("\n\t")


def _visible(char: str) -> str:
    """How a control character is shown: caret notation for C0 and DEL, a hex escape for C1."""
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return "^" + chr(code ^ 0x40)
    return f"\\x{code:02x}"


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


class TerminalText:
    """A stream of machine bytes in, text that a terminal shows but does not obey out.

    Feed it chunks as they come: a UTF-8 sequence or a carriage return split between two chunks is
    held back until the next one (or `finish()`).
    """

    def __init__(self) -> None:
        # Bytes that are not UTF-8 (a lone 0x9b is CSI to a terminal in 8-bit mode) become `\\x9b`.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._carriage_return = False

    def feed(self, data: bytes) -> str:
        return self._render(self._decoder.decode(data))

    def finish(self) -> str:
        text = self._render(self._decoder.decode(b"", final=True))
        if self._carriage_return:
            self._carriage_return = False
            text += "\n"
        return text

    def _render(self, text: str) -> str:
        out = []
        for char in text:
            # A console ends lines with CR LF (or CR CR LF); a CR on its own would let later text
            # overwrite what is shown, so it starts a new line instead.
            if self._carriage_return and char != "\r":
                self._carriage_return = False
                out.append("\n")
                if char == "\n":
                    continue
            if char == "\r":
                self._carriage_return = True
            elif char in _KEPT or not _is_control(char):
                out.append(char)
            else:
                out.append(_visible(char))
        return "".join(out)


def terminal_text(data: bytes) -> str:
    """`data` as a terminal may show it (see `TerminalText`)."""
    text = TerminalText()
    return text.feed(data) + text.finish()
