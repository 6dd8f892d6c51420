"""The Linux system calls the fork server makes through ctypes, with their constants: unshare, setns, prctl, mount.

Standard library only (the fork server imports nothing else). A failed call raises :class:`OSError` with its errno.
"""

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
# Every flag of clone/unshare that makes a new namespace.
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def check(ret, what):
    """``ret`` of a libc call, or the :class:`OSError` its errno stands for when it failed."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags):
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd, nstype):
    check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option, arg):
    check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def mount(source, target, fstype, flags, data=None):
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def umount_detached(target):
    """Detach the mount on ``target`` (lazily: it goes once nothing uses it); the result of the call."""
    return libc.umount2(os.fsencode(target), MNT_DETACH)
