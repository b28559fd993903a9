"""runtime/seccomp.py: the filter against terminal injection, run on a small classic-BPF interpreter."""

from __future__ import annotations

import errno
import struct

import pytest

from veneer.runtime.seccomp import (
    IOCTL_NUMBERS,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    TIOCLINUX,
    TIOCSTI,
    Filter,
    tty_injection_filter,
)

DENIED = SECCOMP_RET_ERRNO | errno.EPERM
TCGETS = 0x5401


def evaluate(program: Filter, *, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Run `program` on a `struct seccomp_data` (little endian), as the kernel's BPF interpreter would."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(args + (0,) * (6 - len(args))))
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            (accumulator,) = struct.unpack_from("<I", data, k)
        elif code == 0x15:  # BPF_JMP | BPF_JEQ | BPF_K
            pc += jt if accumulator == k else jf
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        assert pc < len(program), "a jump leaves the program"


CASES = [(arch, nr) for arch, numbers in IOCTL_NUMBERS.items() for nr in numbers]


@pytest.mark.parametrize(("arch", "nr"), CASES)
@pytest.mark.parametrize("command", [TIOCSTI, TIOCLINUX, 0xFFFFFFFF_00000000 | TIOCSTI])
def test_terminal_injection_is_refused_under_every_abi(arch: int, nr: int, command: int) -> None:
    assert evaluate(tty_injection_filter(), arch=arch, nr=nr, args=(0, command)) == DENIED


@pytest.mark.parametrize(("arch", "nr"), CASES)
def test_other_ioctls_and_syscalls_pass(arch: int, nr: int) -> None:
    program = tty_injection_filter()
    assert evaluate(program, arch=arch, nr=nr, args=(0, TCGETS)) == SECCOMP_RET_ALLOW
    assert evaluate(program, arch=arch, nr=nr + 1, args=(0, TIOCSTI)) == SECCOMP_RET_ALLOW
    assert evaluate(program, arch=0x12345678, nr=nr, args=(0, TIOCSTI)) == SECCOMP_RET_ALLOW
