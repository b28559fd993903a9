"""Seccomp filters for processes that enter a machine: the machine's own, copied, and one against TIOCSTI.

nspawn gives a machine's init a syscall filter (`src/nspawn/nspawn-seccomp.c`) that every process of the
machine inherits; a process that enters the machine from outside inherits nothing. `filters_of()` reads
the init's filters with ptrace (PTRACE_SECCOMP_GET_FILTER, the way CRIU checkpoints them), so the entering
process gets exactly the same ones, whatever nspawn version or settings built them.
`tty_injection_filter()` is one more: a process inside may hold the user's terminal (`veneer exec` and
`shell` pass it on), and TIOCSTI on it would type commands into the user's shell once `exec` returns
(bubblewrap's CVE-2017-5226); TIOCLINUX can do the same on a virtual console.

Stdlib and ctypes only; it must not import from veneer, log, or run commands. Wrappers raise
`OSError(errno, "<call> '<object>': <strerror>")`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import time
from collections.abc import Sequence

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for a tracee that is not our child

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (little endian).
DATA_NR = 0
DATA_ARCH = 4
DATA_ARG1_LOW = 24

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# ioctl's number under every ABI a process of these architectures can call (a 64-bit x86 process may
# also use the i386 and x32 entry points), from the kernel's syscall tables.
IOCTL_NUMBERS = {
    0xC000003E: (16, 0x40000000 | 514),  # AUDIT_ARCH_X86_64: x86_64, x32
    0x40000003: (54,),  # AUDIT_ARCH_I386
    0xC00000B7: (29,),  # AUDIT_ARCH_AARCH64
    0x40000028: (54,),  # AUDIT_ARCH_ARM
}


class SockFilter(ctypes.Structure):
    """`struct sock_filter`, one classic BPF instruction (`include/uapi/linux/filter.h`)."""

    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    """`struct sock_fprog`: a BPF program as `prctl(PR_SET_SECCOMP)` takes it."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter)))


#: A filter as (code, jt, jf, k) instructions.
Filter = tuple[tuple[int, int, int, int], ...]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    return libc


def _oserror(call: str, obj: object) -> OSError:
    err = ctypes.get_errno() or errno.EIO
    return OSError(err, f"{call} '{obj}': {os.strerror(err)}")


def _ptrace(request: int, pid: int, addr: int, data: object, *, call: str) -> int:
    result = int(_libc().ptrace(ctypes.c_long(request), ctypes.c_long(pid), ctypes.c_void_p(addr), data))
    if result < 0:
        raise _oserror(call, pid)
    return result


def _read_filters(pid: int) -> list[Filter]:
    """The filters of a ptrace-stopped `pid`, oldest first: the kernel's index 0 is the first installed
    (`get_nth_filter()` in kernel/seccomp.c)."""
    filters: list[Filter] = []
    while True:
        try:
            count = _ptrace(
                PTRACE_SECCOMP_GET_FILTER, pid, len(filters), None, call="ptrace(SECCOMP_GET_FILTER)"
            )
        except OSError as e:
            if e.errno == errno.ENOENT:  # no filter at this index: all read
                return filters
            raise
        program = (SockFilter * count)()
        _ptrace(PTRACE_SECCOMP_GET_FILTER, pid, len(filters), program, call="ptrace(SECCOMP_GET_FILTER)")
        filters.append(tuple((i.code, i.jt, i.jf, i.k) for i in program))


def _wait_stopped(pid: int, *, timeout: float) -> int:
    """Wait until the tracee `pid` is in a ptrace-stop; the signal to deliver on detach (0 for none)."""
    # Polled: a tracee that never stops (its cgroup frozen, stuck in the kernel) must not hang veneer.
    deadline = time.monotonic() + timeout
    while True:
        waited, status = os.waitpid(pid, WALL | os.WNOHANG)
        if waited:
            break
        if time.monotonic() > deadline:
            raise OSError(errno.ETIME, f"ptrace(INTERRUPT) '{pid}': the process did not stop (frozen?)")
        time.sleep(0.005)
    if not os.WIFSTOPPED(status):
        raise OSError(errno.ESRCH, f"waitpid '{pid}': the process ended")
    # A signal-delivery-stop (instead of the interrupt's stop) will do as well; its signal is passed on.
    return 0 if status >> 16 == PTRACE_EVENT_STOP else os.WSTOPSIG(status)


def filters_of(pid: int, *, timeout: float = 5.0) -> list[Filter]:
    """The seccomp filters of process `pid`, oldest first (the order to install them in).

    The process is stopped for the moment it takes to read them (PTRACE_SEIZE, PTRACE_INTERRUPT) and
    resumed; a signal that arrived meanwhile is delivered on detach. Needs CAP_SYS_ADMIN and a caller
    that has no filter itself; fails with EPERM if something else traces the process, ETIME if it does
    not stop within `timeout` seconds (it stays seized until the caller exits: only a stopped tracee can
    be detached).
    """
    _ptrace(PTRACE_SEIZE, pid, 0, None, call="ptrace(SEIZE)")
    _ptrace(PTRACE_INTERRUPT, pid, 0, None, call="ptrace(INTERRUPT)")
    pending = _wait_stopped(pid, timeout=timeout)
    try:
        return _read_filters(pid)
    finally:
        try:
            _ptrace(PTRACE_DETACH, pid, 0, ctypes.c_void_p(pending), call="ptrace(DETACH)")
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise


def tty_injection_filter() -> Filter:
    """A filter that fails ioctl(TIOCSTI) and ioctl(TIOCLINUX) with EPERM and allows everything else."""
    program: list[tuple[int, int, int, int]] = [(BPF_LD_W_ABS, 0, 0, DATA_ARCH)]
    # Jump offsets are relative to the next instruction and are filled in once the layout is known.
    arch_checks = []
    for arch in IOCTL_NUMBERS:
        arch_checks.append(len(program))
        program.append((BPF_JMP_JEQ_K, 0, 0, arch))
    program.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))  # an architecture not listed
    number_checks: list[tuple[int, int]] = []
    arch_targets = []
    for numbers in IOCTL_NUMBERS.values():
        arch_targets.append(len(program))
        program.append((BPF_LD_W_ABS, 0, 0, DATA_NR))
        for number in numbers:
            number_checks.append((len(program), number))
            program.append((BPF_JMP_JEQ_K, 0, 0, number))
        program.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    request = len(program)
    program += [
        (BPF_LD_W_ABS, 0, 0, DATA_ARG1_LOW),  # ioctl's request is an unsigned int: the low half
        (BPF_JMP_JEQ_K, 1, 0, TIOCSTI),
        (BPF_JMP_JEQ_K, 0, 1, TIOCLINUX),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    for at, target in zip(arch_checks, arch_targets, strict=True):
        program[at] = (BPF_JMP_JEQ_K, target - at - 1, 0, program[at][3])
    for at, number in number_checks:
        program[at] = (BPF_JMP_JEQ_K, request - at - 1, 0, number)
    return tuple(program)


def prepare(filters: Sequence[Filter]) -> list[SockFprog]:
    """The filters as programs for `install()`, built before fork so the child only makes the calls."""
    programs = []
    for instructions in filters:
        array = (SockFilter * len(instructions))(*(SockFilter(*i) for i in instructions))
        # The cast pointer keeps `array` alive (ctypes records it in the program's _objects).
        programs.append(SockFprog(len(instructions), ctypes.cast(array, ctypes.POINTER(SockFilter))))
    return programs


def install(programs: Sequence[SockFprog]) -> None:
    """Install `programs` in order on this process (needs no_new_privs or CAP_SYS_ADMIN)."""
    prctl = _libc().prctl
    for program in programs:
        if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
            raise _oserror("prctl(PR_SET_SECCOMP)", f"{program.len} instructions")
