"""How the fork server isolates its children: namespaces, mounts, an unprivileged uid, rlimits, Landlock, seccomp.

Applied once in the server (inherited by every child): mount, network, IPC and UTS namespaces; the Python
installation re-exposed read-only when it lives under a directory the sandbox uid cannot enter (e.g. ``/root``); the
scratch tree as a size-capped tmpfs of the server's own; the children's environment and standard streams (see
``server.py``). Applied per child while it is prepared, before its job arrives: a fresh PID namespace whose init is the
child (its exit kills everything the run spawned), a new session, ``PR_SET_PDEATHSIG``, the last job's rlimits,
``no_new_privs``, a Landlock domain of its own (writes only beneath the job directory, no TCP, no signals or ptrace
outside its domain), seccomp (its BPF program is compiled once in the server; a child only installs it, see
``seccomp.py``). Applied per child once its job arrives: the job's rlimits where they differ, the job directory as
working directory, and an unprivileged uid of its own (then ``PR_SET_PDEATHSIG`` again, which the uid change clears).
The judge child (see ``harness.py``) gets a confinement of its own: :meth:`Isolation.enter_judge`.

:class:`Isolation` detects what the host allows and reports it: ``features`` names the layers that are on, ``missing``
why each of the others is not.
"""

import ctypes
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile

from .linux import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    check,
    libc,
    mount,
    prctl,
    setns,
    umount_detached,
    unshare,
)
from .seccomp import SeccompProgram, seccomp_bpf_from_helper
from .wire import RESULT_FD

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_FS_READ = 1 | 4 | 8  # EXECUTE | READ_FILE | READ_DIR
LANDLOCK_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
LANDLOCK_NET_ALL = 1 | 2  # BIND_TCP | CONNECT_TCP
LANDLOCK_SCOPE_ALL = 1 | 2  # ABSTRACT_UNIX_SOCKET | SIGNAL
RLIMITS = (  # (key in a request's limits, or None for 0; the rlimit)
    ("address_space_bytes", resource.RLIMIT_AS),
    ("cpu_seconds", resource.RLIMIT_CPU),
    ("file_size_bytes", resource.RLIMIT_FSIZE),
    ("open_files", resource.RLIMIT_NOFILE),
    ("processes", resource.RLIMIT_NPROC),
    (None, resource.RLIMIT_CORE),
)


class Isolation:
    """Detects and applies the isolation layers; ``features`` names what is on, ``missing`` why the rest is not."""

    def __init__(self, config):
        self.config = config
        self.features = ["rlimits", "no_new_privs", "new_session", "empty_environment", "scratch_dir"]
        self.missing = {}
        self.is_root = os.geteuid() == 0
        self.own_pidns_fd = None
        self.landlock_abi = 0
        self.seccomp_program = None
        self.drop_uid = None

    def _miss(self, name, why):
        self.missing[name] = str(why)

    def setup_once(self, scratch_root):
        """Detect and apply, in the server, what every child inherits; a layer that cannot be had is noted in
        ``missing`` and the others are still tried."""
        self._enter_namespaces()
        if "mount_namespace" in self.features:
            try:
                self.mount_scratch(scratch_root)
                self.features.append("scratch_tmpfs")
            except OSError as exc:
                self._miss("scratch_tmpfs", exc)
        else:
            self._miss("scratch_tmpfs", "needs a mount namespace")
        self._probe_pid_namespaces()
        if self.is_root and "mount_namespace" in self.features:
            try:
                self._expose_python()
            except OSError as exc:
                self._miss("python_exposed", exc)
        if self.is_root:
            self.drop_uid = self.config["sandbox_uid"] or 100000 + os.getpid()
            ok, why = self._probe_uid(scratch_root)
            if ok:
                self.features.append("unprivileged_uid")
            else:
                self.drop_uid = None
                self._miss("unprivileged_uid", why)
        else:
            self._miss("unprivileged_uid", "server is not root: the sandbox keeps the caller's uid")
        self._probe_landlock()
        program, why = seccomp_bpf_from_helper()
        if program is None:
            self._miss("seccomp", why)
        else:
            self.seccomp_program = SeccompProgram(program)
            self.features.append("seccomp")

    def _enter_namespaces(self):
        """Mount, network, IPC and UTS namespaces for the server (in a user namespace when it is not root), with
        mounts private to it."""
        try:
            if self.is_root:
                unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            else:
                uid, gid = os.geteuid(), os.getegid()
                unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"0 {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"0 {gid} 1")
                self.features.append("user_namespace")
            self.features += ["mount_namespace", "network_namespace", "ipc_namespace"]
            mount(None, "/", None, MS_REC | MS_PRIVATE)
        except OSError as exc:
            for name in ("mount_namespace", "network_namespace", "ipc_namespace"):
                self._miss(name, exc)

    def _probe_pid_namespaces(self):
        """Whether each child can be init of a PID namespace of its own: one trial child, then back to the server's."""
        try:
            self.own_pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            unshare(CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if os.getpid() == 1 else 1)
            self.reset_pidns()
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise OSError("child was not pid 1 of a new PID namespace")
            self.features.append("pid_namespace")
        except OSError as exc:
            self.own_pidns_fd = None
            self._miss("pid_namespace", exc)

    def _probe_landlock(self):
        """The kernel's Landlock ABI version: 4 adds the TCP rules, 6 the signal and abstract-socket scopes."""
        try:
            abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
            if abi < 1:
                raise OSError(ctypes.get_errno(), "Landlock not available")
            self.landlock_abi = int(abi)
            self.features.append("landlock")
            if abi >= 4:
                self.features.append("landlock_network")
            else:
                self._miss("landlock_network", f"Landlock ABI {abi} < 4")
            if abi >= 6:
                self.features.append("landlock_scope")
            else:
                self._miss("landlock_scope", f"Landlock ABI {abi} < 6")
        except OSError as exc:
            for name in ("landlock", "landlock_network", "landlock_scope"):
                self._miss(name, exc)

    def mount_scratch(self, scratch_root):
        """A tmpfs on ``scratch_root``, in memory and private to this server: creating and emptying the job directory
        costs microseconds instead of a disk filesystem's ~65, a job's files are capped in size and number (empty
        files cost kernel memory that the size cap does not count), and it is gone with the server's namespace even
        when the server is killed."""
        size_mb = int(self.config["scratch_mb"])
        options = f"mode=0711,size={size_mb}m,nr_inodes={max(1024, 256 * size_mb)}"
        mount("tmpfs", scratch_root, "tmpfs", MS_NOSUID | MS_NODEV, options)

    def reset_pidns(self):
        """Back to the server's own PID namespace for the children forked from now on."""
        setns(self.own_pidns_fd, CLONE_NEWPID)

    def _expose_python(self):
        """Re-mount the Python installation readable for the sandbox uid when a parent directory is private."""
        needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)}
        blocked = {}
        for path in needed:
            parts = path.split("/")
            for i in range(2, len(parts) + 1):
                ancestor = "/".join(parts[:i]) or "/"
                if not os.stat(ancestor).st_mode & 0o001:
                    blocked.setdefault(ancestor, set()).add(path)
                    break
        for private_dir, paths in blocked.items():
            keep = sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))
            staging = tempfile.mkdtemp(prefix="btp-expose-")
            for i, path in enumerate(keep):
                os.mkdir(f"{staging}/{i}")
                mount(path, f"{staging}/{i}", None, MS_BIND | MS_REC)
            mount("tmpfs", private_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for i, path in enumerate(keep):
                os.makedirs(path, mode=0o755, exist_ok=True)
                mount(f"{staging}/{i}", path, None, MS_BIND | MS_REC)
                mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                umount_detached(f"{staging}/{i}")
            shutil.rmtree(staging, ignore_errors=True)
        self.features.append("python_exposed")

    def _probe_uid(self, scratch_root):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(self.drop_uid, self.drop_uid, self.drop_uid)
                os.setresuid(self.drop_uid, self.drop_uid, self.drop_uid)
                with open(os.path.join(os.path.dirname(os.__file__), "this.py"), "rb"):
                    pass
                os.listdir(os.path.dirname(os.__file__))
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            return True, ""
        return False, "the Python installation is not readable by an unprivileged uid"

    # ------------------------------------------------------------------------------------------- per child, in child
    def prepare_in_child(self, scratch, limits):
        """The layers that do not depend on the job, applied while the child waits for its request, in order: a new
        session, ``PR_SET_PDEATHSIG``, the rlimits of the last job (``limits``; None for none), ``no_new_privs``,
        Landlock and seccomp. Only the uid change, and any limit of the job that is lower, are left for
        :meth:`apply_in_child`, so little new runs, and few of the server's pages are copied, between a job's
        arrival and its code. A hard limit cannot be raised again (the server may lack ``CAP_SYS_RESOURCE``): the
        server replaces a waiting child whose limits are below what the next job asks for.
        """
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if limits is not None:
            set_rlimits(limits)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.landlock_abi:
            self._landlock_restrict(scratch)
        if self.seccomp_program is not None:
            self.seccomp_program.load()

    def apply_in_child(self, scratch, limits, preset):
        """What needs the job: the rlimits it asks for (those not already ``preset``, which are never lower), its
        scratch directory as the working directory, and the unprivileged uid, just before its code runs."""
        set_rlimits(limits, unless_as=preset)
        os.chdir(scratch)
        if self.drop_uid is not None:
            os.setgroups([])
            os.setresgid(self.drop_uid, self.drop_uid, self.drop_uid)
            os.setresuid(self.drop_uid, self.drop_uid, self.drop_uid)
            # A uid change clears the parent-death signal: arm it again, then make sure the server did not die
            # before it was armed (the write end of a pipe reports POLLERR once its reader is gone).
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            server_alive = select.poll()
            server_alive.register(RESULT_FD, select.POLLOUT)
            if any(events & select.POLLERR for _, events in server_alive.poll(0)):
                os._exit(72)

    def enter_judge(self, limits):
        """The judge child's confinement. It runs only the tests' code, never the program's, and must be out of the
        program's reach: a new session, the job's rlimits, ``no_new_privs``, a Landlock domain of its own that
        writes nowhere but ``/dev/null`` (and, being another domain, cannot be signalled or traced by the program's),
        seccomp, a uid of its own (not the program's), and memory that is not dumpable (no ``/proc/<pid>/mem``)."""
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        set_rlimits(limits)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.landlock_abi:
            ruleset = self._landlock_ruleset()
            try:
                check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
            finally:
                os.close(ruleset)
        if self.seccomp_program is not None:
            self.seccomp_program.load()
        os.chdir("/")
        if self.drop_uid is not None:
            uid = self.judge_uid
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_DUMPABLE, 0)

    @property
    def judge_uid(self):
        """The judge's uid: the sandbox uid moved past the PID range, so that it is no other server's sandbox uid."""
        return self.drop_uid + (1 << 22) if self.drop_uid is not None else None

    def _landlock_restrict(self, scratch):
        """Confine this child to a ruleset of its own: reads everywhere, writes beneath ``scratch`` and to
        ``/dev/null``, no TCP, no signals to (or ptrace of) anything outside it."""
        abi = self.landlock_abi
        ruleset = self._landlock_ruleset()
        try:
            self._landlock_rule(ruleset, scratch, LANDLOCK_FS_ALL_BY_ABI.get(abi, (1 << 16) - 1))
            check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
        finally:
            os.close(ruleset)

    def _landlock_ruleset(self):
        """A new ruleset: reads everywhere, writes to ``/dev/null``."""
        abi = self.landlock_abi
        fs_all = LANDLOCK_FS_ALL_BY_ABI.get(abi, (1 << 16) - 1)
        attr = struct.pack("=QQQ", fs_all, LANDLOCK_NET_ALL if abi >= 4 else 0, LANDLOCK_SCOPE_ALL if abi >= 6 else 0)
        size = 8 if abi < 4 else (16 if abi < 6 else 24)
        buf = ctypes.create_string_buffer(attr[:size], size)
        ruleset = check(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), 0), "landlock")
        truncate = 1 << 14
        self._landlock_rule(ruleset, "/", LANDLOCK_FS_READ)
        self._landlock_rule(ruleset, "/dev/null", 2 | 4 | (truncate if abi >= 3 else 0))
        return ruleset

    def _landlock_rule(self, ruleset, path, access):
        fs_all = LANDLOCK_FS_ALL_BY_ABI.get(self.landlock_abi, (1 << 16) - 1)
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs_all, fd), 12)
            check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0), "landlock rule")
        finally:
            os.close(fd)


def set_rlimits(limits, unless_as=None):
    """Set each of the job's rlimits (soft and hard), except those equal in ``unless_as``: already set."""
    for key, which in RLIMITS:
        value = limits[key] if key is not None else 0
        if unless_as is not None and (key is None or unless_as[key] == value):
            continue
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def within(limits, preset):
    """Whether a child that set ``preset`` ahead (None: nothing) can still set ``limits``: none of them is higher."""
    if preset is None or limits is None:
        return preset is None
    return all(limits[key] <= preset[key] for key, _ in RLIMITS if key is not None)
