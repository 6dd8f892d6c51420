"""The children's seccomp filter: compiled once (by libseccomp, in a short-lived helper), installed by each child.

The filter denies, with ``EPERM``, the system calls a test program has no use for and that reach beyond its sandbox
(:data:`SECCOMP_DENIED`), ``clone`` with any namespace flag and ``socket`` for the network families; ``clone3``
fails with ``ENOSYS`` so that libc falls back to ``clone``, whose flags the filter can inspect. Everything else is
allowed: Landlock, the namespaces and the rlimits confine the rest (see ``isolation.py``).
"""

import ctypes
import errno
import os

from .linux import NAMESPACE_FLAGS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, check, libc
from .wire import write_all

# Denied with EPERM in every child (see seccomp_bpf for the argument-filtered clone/clone3/socket rules).
SECCOMP_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "personality",
    "io_uring_setup",
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    "kcmp",
    "pidfd_getfd",
)


class _SockFprog(ctypes.Structure):
    """The kernel's ``struct sock_fprog``: a classic-BPF program for ``PR_SET_SECCOMP``."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def seccomp_bpf(sc):
    """The seccomp filter as classic BPF, compiled once by libseccomp so that each child only has to install it."""
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in SECCOMP_DENIED:
        try:
            filt.add_rule(deny, name)
        except Exception:  # a syscall unknown to this libseccomp/architecture
            continue
    for bit in NAMESPACE_FLAGS:
        filt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    # clone3 passes flags in memory that seccomp cannot inspect: ENOSYS makes libc fall back to clone.
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for family in (2, 10, 16, 17):  # AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
        filt.add_rule(deny, "socket", sc.Arg(0, sc.EQ, family))
    fd = os.memfd_create("seccomp-bpf")
    try:
        with open(fd, "w+b", closefd=False) as export:
            filt.export_bpf(export)
        size = os.lseek(fd, 0, os.SEEK_END)
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not program or len(program) % 8:
        raise OSError(f"libseccomp exported {len(program)} bytes, not whole 8-byte BPF instructions")
    return program


def seccomp_bpf_from_helper():
    """``(program, None)``, or ``(None, why not)``: the filter compiled in a short-lived forked helper.

    The bindings import ``threading`` (pyseccomp through ``ctypes.util``); in the server, its at-fork hook would run
    in every child and copy ~130 pages of the server's memory on each fork.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            for module_name in ("pyseccomp", "seccomp"):
                try:
                    module = __import__(module_name)
                except ImportError:
                    continue
                try:
                    reply = b"P" + seccomp_bpf(module)
                except Exception as exc:
                    reply = f"E{module_name} could not compile the filter: {exc}".encode()
                break
            else:
                reply = b"Einstall pyseccomp (pip) or python3-seccomp (apt)"
            write_all(write_fd, reply)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    reply = b"".join(chunks)
    if reply[:1] == b"P":
        return reply[1:], None
    return None, reply[1:].decode(errors="replace") or "the seccomp helper failed"


class SeccompProgram:
    """A compiled filter held in the server; ``load`` in a child costs one ``prctl`` (no_new_privs must be set)."""

    def __init__(self, program):
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))

    def load(self):
        check(
            libc.prctl(
                ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(self._fprog), 0, 0
            ),
            "seccomp",
        )
