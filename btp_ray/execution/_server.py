"""The warm fork server: a small trusted process that forks one isolated child per run of untrusted code.

This file is executed as a script (``python -I _server.py``) by :class:`btp_ray.execution.sandbox.Sandbox` with an
empty environment, so it imports nothing from btp_ray and only the standard library (``pyseccomp``/``seccomp``, when
installed, only in a short-lived helper that compiles the filter). It never decides verdicts: it runs the child,
enforces the wall clock from outside, captures what the child reported and printed, sweeps everything the child
spawned, and hands the raw capture back.

Protocol with the owner (over the server's stdin/stdout): 4-byte big-endian length + UTF-8 JSON per message. The first
message is the configuration; the server answers ``{"ok": true, "features": [...], "missing": {...}}``; then each
request ``{"op": "run", ...}`` gets one response.

Each run gets a fresh child, forked before its request arrives: while one job runs, the server already forks and
prepares the next job's child (the job-independent setup below), which then waits, still privileged but already
confined, for its request on a pipe. Only then does it apply the job-dependent rest and run untrusted code.

Isolation, applied once in the server (inherited by every child): mount, network, IPC and UTS namespaces; the Python
installation re-exposed read-only when it lives under a directory the sandbox uid cannot enter (e.g. ``/root``); the
scratch tree as a size-capped tmpfs of the server's own; the children's environment and standard streams. Applied per
child while it is prepared: a fresh PID namespace whose init is the child (its exit kills everything the run spawned),
a new session, ``PR_SET_PDEATHSIG``, the last job's rlimits, ``no_new_privs``, a Landlock domain of its own (writes
only beneath the job directory, no TCP, no signals or ptrace outside its domain), seccomp (its BPF program is compiled
once in the server; a child only installs it). Applied per child once its job arrives: the job's rlimits where they
differ, the job directory as working directory, and an unprivileged uid of its own (then ``PR_SET_PDEATHSIG`` again,
which the uid change clears).
"""

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import termios
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
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
RESULT_FD = 3
REQUEST_FD = 4
CALLS_FD = 5  # the program child reads the judge's calls here
REPLIES_FD = 6  # and writes its replies here
# Denied with EPERM in every child (see _seccomp_bpf for the argument-filtered clone/clone3/socket rules).
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

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _SockFprog(ctypes.Structure):
    """The kernel's ``struct sock_fprog``: a classic-BPF program for ``PR_SET_SECCOMP``."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _unshare(flags):
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _prctl(option, arg):
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _mount(source, target, fstype, flags, data=None):
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


# ----------------------------------------------------------------------------------------------------------- framing
def _recv_body(fd):
    header = codec.read_exact(fd, 4)
    if header is None:
        return None
    return codec.read_exact(fd, struct.unpack(">I", header)[0])


def _recv(fd):
    body = _recv_body(fd)
    return None if body is None else json.loads(body)


def _send_body(fd, body):
    codec.write_all(fd, struct.pack(">I", len(body)) + body)


def _send(fd, obj):
    _send_body(fd, json.dumps(obj, ensure_ascii=True).encode())


# ------------------------------------------------------------------------------------------------------ the runtime
def _load(file_name, module_name):
    """A module from this script's directory (``python -I`` does not put it on ``sys.path``)."""
    import importlib.util

    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), file_name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


codec = _load("_codec.py", "_btp_sandbox_codec")
runtime = _load("_runtime.py", "_btp_sandbox_runtime")


def _emitter(fd):
    """``emit(event)``: one JSON line on ``fd``, with the functions bound now, before any untrusted code runs."""
    write, dumps, exit_now = os.write, json.dumps, os._exit

    def emit(event):
        try:
            data = (dumps(event, ensure_ascii=True) + "\n").encode()
        except BaseException:
            data = b'{"e":"unreportable"}\n'
        try:
            while data:
                data = data[write(fd, data) :]
        except OSError:
            exit_now(70)

    return emit


# -------------------------------------------------------------------------------------------------------- isolation
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
        try:
            if self.is_root:
                _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            else:
                uid, gid = os.geteuid(), os.getegid()
                _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"0 {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"0 {gid} 1")
                self.features.append("user_namespace")
            self.features += ["mount_namespace", "network_namespace", "ipc_namespace"]
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
        except OSError as exc:
            for name in ("mount_namespace", "network_namespace", "ipc_namespace"):
                self._miss(name, exc)
        if "mount_namespace" in self.features:
            try:
                self.mount_scratch(scratch_root)
                self.features.append("scratch_tmpfs")
            except OSError as exc:
                self._miss("scratch_tmpfs", exc)
        else:
            self._miss("scratch_tmpfs", "needs a mount namespace")
        try:
            self.own_pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            _unshare(CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if os.getpid() == 1 else 1)
            self._reset_pidns()
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise OSError("child was not pid 1 of a new PID namespace")
            self.features.append("pid_namespace")
        except OSError as exc:
            self.own_pidns_fd = None
            self._miss("pid_namespace", exc)
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
        try:
            abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
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
        program, why = _seccomp_bpf_from_helper()
        if program is None:
            self._miss("seccomp", why)
        else:
            self.seccomp_program = _SeccompProgram(program)
            self.features.append("seccomp")

    def mount_scratch(self, scratch_root):
        """A tmpfs on ``scratch_root``, in memory and private to this server: creating and emptying the job directory
        costs microseconds instead of a disk filesystem's ~65, a job's files are capped in size and number (empty
        files cost kernel memory that the size cap does not count), and it is gone with the server's namespace even
        when the server is killed."""
        size_mb = int(self.config["scratch_mb"])
        options = f"mode=0711,size={size_mb}m,nr_inodes={max(1024, 256 * size_mb)}"
        _mount("tmpfs", scratch_root, "tmpfs", MS_NOSUID | MS_NODEV, options)

    def _reset_pidns(self):
        _check(_libc.setns(ctypes.c_int(self.own_pidns_fd), ctypes.c_int(CLONE_NEWPID)), "setns")

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
                _mount(path, f"{staging}/{i}", None, MS_BIND | MS_REC)
            _mount("tmpfs", private_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for i, path in enumerate(keep):
                os.makedirs(path, mode=0o755, exist_ok=True)
                _mount(f"{staging}/{i}", path, None, MS_BIND | MS_REC)
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                _libc.umount2(os.fsencode(f"{staging}/{i}"), MNT_DETACH)
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
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if limits is not None:
            _set_rlimits(limits)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.landlock_abi:
            self._landlock_restrict(scratch)
        if self.seccomp_program is not None:
            self.seccomp_program.load()

    def apply_in_child(self, scratch, limits, preset):
        """What needs the job: the rlimits it asks for (those not already ``preset``, which are never lower), its
        scratch directory as the working directory, and the unprivileged uid, just before its code runs."""
        _set_rlimits(limits, unless_as=preset)
        os.chdir(scratch)
        if self.drop_uid is not None:
            os.setgroups([])
            os.setresgid(self.drop_uid, self.drop_uid, self.drop_uid)
            os.setresuid(self.drop_uid, self.drop_uid, self.drop_uid)
            # A uid change clears the parent-death signal: arm it again, then make sure the server did not die
            # before it was armed (the write end of a pipe reports POLLERR once its reader is gone).
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _set_rlimits(limits)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.landlock_abi:
            ruleset = self._landlock_ruleset()
            try:
                _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
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
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(PR_SET_DUMPABLE, 0)

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
            _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
        finally:
            os.close(ruleset)

    def _landlock_ruleset(self):
        """A new ruleset: reads everywhere, writes to ``/dev/null``."""
        abi = self.landlock_abi
        fs_all = LANDLOCK_FS_ALL_BY_ABI.get(abi, (1 << 16) - 1)
        attr = struct.pack("=QQQ", fs_all, LANDLOCK_NET_ALL if abi >= 4 else 0, LANDLOCK_SCOPE_ALL if abi >= 6 else 0)
        size = 8 if abi < 4 else (16 if abi < 6 else 24)
        buf = ctypes.create_string_buffer(attr[:size], size)
        ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), 0), "landlock")
        truncate = 1 << 14
        self._landlock_rule(ruleset, "/", LANDLOCK_FS_READ)
        self._landlock_rule(ruleset, "/dev/null", 2 | 4 | (truncate if abi >= 3 else 0))
        return ruleset

    def _landlock_rule(self, ruleset, path, access):
        fs_all = LANDLOCK_FS_ALL_BY_ABI.get(self.landlock_abi, (1 << 16) - 1)
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs_all, fd), 12)
            _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0), "landlock rule")
        finally:
            os.close(fd)


def _set_rlimits(limits, unless_as=None):
    """Set each of the job's rlimits (soft and hard), except those equal in ``unless_as``: already set."""
    for key, which in RLIMITS:
        value = limits[key] if key is not None else 0
        if unless_as is not None and (key is None or unless_as[key] == value):
            continue
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _seccomp_bpf(sc):
    """The seccomp filter as classic BPF, compiled once by libseccomp so that each child only has to install it."""
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in SECCOMP_DENIED:
        try:
            filt.add_rule(deny, name)
        except Exception:  # a syscall unknown to this libseccomp/architecture
            continue
    clone_newcgroup = 0x02000000
    namespace_bits = (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
    for bit in (*namespace_bits, clone_newcgroup):
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


def _seccomp_bpf_from_helper():
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
                    reply = b"P" + _seccomp_bpf(module)
                except Exception as exc:
                    reply = f"E{module_name} could not compile the filter: {exc}".encode()
                break
            else:
                reply = b"Einstall pyseccomp (pip) or python3-seccomp (apt)"
            view = memoryview(reply)
            while view:
                view = view[os.write(write_fd, view) :]
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


class _SeccompProgram:
    """A compiled filter held in the server; ``load`` in a child costs one ``prctl`` (no_new_privs must be set)."""

    def __init__(self, program):
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))

    def load(self):
        _check(
            _libc.prctl(
                ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(self._fprog), 0, 0
            ),
            "seccomp",
        )


# -------------------------------------------------------------------------------------------------------- running
class Server:
    """Owns the isolation, the scratch root and the loop that runs one child per request."""

    def __init__(self, config, out_fd):
        self.config = config
        self.out_fd = out_fd
        self.scratch_root = tempfile.mkdtemp(prefix="btp-sandbox-")
        os.chmod(self.scratch_root, 0o711)
        self.isolation = Isolation(config)
        self.encode = None
        self.counter = 0
        self.prepared = None
        self.prepare_while_running = False
        self.last_limits = None
        self.dying = []

    def start(self):
        self.isolation.setup_once(self.scratch_root)
        preloaded, failed = [], []
        for name in self.config["preload_modules"]:
            try:
                __import__(name)
                preloaded.append(name)
            except Exception as exc:
                failed.append(f"{name}: {exc}")
        codec.TRUSTED_PACKAGES.update(name.split(".")[0] for name in preloaded)
        self.encode = codec.build_encoder()
        self._set_up_what_children_inherit()
        # Two children at once are apart only when each job has its own PID namespace and is not the server's uid.
        self.prepare_while_running = self.isolation.own_pidns_fd is not None and self.isolation.drop_uid is not None
        gc.collect()
        gc.freeze()
        vm = _vm_size()
        return {
            "ok": True,
            "features": self.isolation.features,
            "missing": self.isolation.missing,
            "preloaded": preloaded,
            "preload_failed": failed,
            "server_vm_bytes": vm,
            "scratch_root": self.scratch_root,
            "sandbox_uid": self.isolation.drop_uid,
            "judge_uid": self.isolation.judge_uid,
            "landlock_abi": self.isolation.landlock_abi,
        }

    def _set_up_what_children_inherit(self):
        """The environment, argv and standard streams every child starts with, made once here rather than in each
        child: a child that makes them itself copies about 170 of the server's pages on the way (``HOME``,
        ``TMPDIR`` and the tempdir are set before each fork, see :meth:`prepare`). The server itself never writes to
        the standard streams (its protocol runs on other descriptors), so a child inherits them empty.
        """
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", USER="sandbox")
        sys.argv = ["program"]
        # The standard streams live as long as the server and its children: no context manager.
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115

    def prepare(self):
        """Fork the next job's child ahead of its request, so that neither the fork nor the job-independent setup
        delays that job (they overlap the job before it). Its job directory is made first, fresh, so that the child
        can be confined to it before the job arrives. The child takes the last job's rlimits ahead; one waiting with
        a limit lower than the last job's is replaced, as it could not raise it."""
        if self.prepared is not None:
            if _within(self.last_limits, self.prepared.preset_limits):
                return
            prepared, self.prepared = self.prepared, None
            self._retire(prepared)
        self.counter += 1
        job_dir = os.path.join(self.scratch_root, f"job{self.counter}")
        os.mkdir(job_dir, 0o700)
        if self.isolation.drop_uid is not None:
            os.chown(job_dir, self.isolation.drop_uid, self.isolation.drop_uid)
        os.environ["HOME"] = os.environ["TMPDIR"] = tempfile.tempdir = job_dir  # for the child to inherit
        try:
            self._fork_prepared(job_dir)
        except BaseException:
            self._remove_job_dir(job_dir)
            raise

    def _fork_prepared(self, job_dir):
        pipes = [os.pipe() for _ in range(6)]  # request, result, stdout, stderr, judge->program, program->judge
        (req_r, req_w), (res_r, res_w), (out_r, out_w), (err_r, err_w), (calls_r, calls_w), (rep_r, rep_w) = pipes
        child_ends, server_ends = (req_r, res_w, out_w, err_w, calls_r, rep_w), (req_w, res_r, out_r, err_r)
        judge_ends = (calls_w, rep_r)
        use_pidns = self.isolation.own_pidns_fd is not None
        child = None
        try:
            if use_pidns:
                _unshare(CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    self._child(child_ends, job_dir)  # never returns
            finally:
                if use_pidns:
                    self.isolation._reset_pidns()
            child = _Prepared(pid, None, *server_ends, use_pidns, self.last_limits, job_dir)
            child.judge_ends = judge_ends
            child.pidfd = os.pidfd_open(pid)
        except BaseException:
            if child is not None:
                child.close()
            else:
                for fd in (*server_ends, *judge_ends):
                    os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self.prepared = child

    def run(self, request, body, judge_body):
        child = None
        self.last_limits = request["limits"]
        self.reap()
        try:
            for _ in range(2):
                self.prepare()
                child, self.prepared = self.prepared, None
                started = time.monotonic()
                if _deliver(child.request_w, body):
                    judge = self._fork_judge(child, judge_body, request["limits"]) if judge_body else None
                    child.close_judge_ends()
                    if self.prepare_while_running:
                        # The server would only wait for this job: fork the next one's child now, on the other core.
                        with contextlib.suppress(Exception):
                            self.prepare()
                    try:
                        reply = self._supervise(request, child, judge, started)
                    finally:
                        if judge is not None:
                            self.dying.append(judge)
                    if not _unread(child.request_w):
                        return reply
                # It died before it had read all of its job (killed from outside), so no job code ran: run the job
                # in a fresh child instead.
                self._retire(child)
                child = None
            raise OSError("two prepared children died before receiving their job")
        finally:
            if child is not None:
                self.dying.append(child)

    def reap(self):
        """Reap the children of the last job (already killed) and remove its job directory. The server replies to a
        job as soon as its children have reported all they will, then reaps them while the owner reads the reply."""
        dying, self.dying = self.dying, []
        for child in dying:
            self._retire(child)

    def _retire(self, child):
        """Kill (if need be) and reap a child, then remove its job directory with whatever the job left there."""
        child.close()
        if child.job_dir is not None:
            self._remove_job_dir(child.job_dir)

    def _remove_job_dir(self, path):
        """What cannot be removed entry by entry (say, directories nested deeper than the recursion limit) goes with
        the whole tmpfs, replaced by a fresh one."""
        try:
            _remove_tree(path)
            return
        except (OSError, RecursionError):
            if "scratch_tmpfs" not in self.isolation.features:
                raise
        prepared, self.prepared = self.prepared, None
        if prepared is not None:  # its directory goes with the old tmpfs
            prepared.close()
        _check(_libc.umount2(os.fsencode(self.scratch_root), MNT_DETACH), "umount scratch")
        self.isolation.mount_scratch(self.scratch_root)

    def _child(self, fds, job_dir):
        """Body of a prepared child: job-independent setup, then wait for the request, isolate and run it."""
        try:
            req_r, res_w, out_w, err_w, calls_r, rep_w = fds
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(res_w, RESULT_FD)
            os.dup2(req_r, REQUEST_FD)
            os.dup2(calls_r, CALLS_FD)
            os.dup2(rep_w, REPLIES_FD)
            os.closerange(REPLIES_FD + 1, 1 << 16)
            self.isolation.prepare_in_child(job_dir, self.last_limits)
            body = _recv_body(REQUEST_FD)
            if body is None:  # the server closed, or died, before it had a job for this child
                os._exit(0)
            os.close(REQUEST_FD)
            request = json.loads(body)
            if request.get("stdin") is not None:
                _stdin_from(request["stdin"])
            self.isolation.apply_in_child(job_dir, request["limits"], preset=self.last_limits)
            runtime.run_program(request, self.encode, _emitter(RESULT_FD), os._exit)
        except BaseException as exc:
            try:
                os.write(2, f"sandbox child setup failed: {exc!r}\n".encode())
            finally:
                os._exit(71)
        os._exit(0)

    def _fork_judge(self, child, judge_body, limits):
        """Fork the job's judge child: it runs the tests' code (never the program's) and calls the program child over
        the two pipes made with it. Forked only for jobs that have tests other than direct calls."""
        res_r, res_w = os.pipe()
        calls_w, rep_r = child.judge_ends
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(os.open("/dev/null", os.O_RDWR), 0)
                os.dup2(0, 1)
                os.dup2(0, 2)
                os.dup2(res_w, RESULT_FD)
                os.dup2(calls_w, CALLS_FD)
                os.dup2(rep_r, REPLIES_FD)
                os.closerange(REPLIES_FD + 1, 1 << 16)
                self.isolation.enter_judge(limits)
                spec = json.loads(judge_body)
                runtime.run_judge(spec, self.encode, _emitter(RESULT_FD), os._exit)
            finally:
                os._exit(71)
        os.close(res_w)
        return _Prepared(pid, None, None, res_r, None, None, False, None, None)

    def _supervise(self, request, child, judge, started):
        """Wait for the job's children and collect what they report, enforcing the wall clock from outside: each
        test (and the loading) within ``test_timeout_s`` of the last progress, the whole run within ``deadline_s``."""
        pid, pidfd, res_r, out_r, err_r = child.pid, child.pidfd, child.result_r, child.out_r, child.err_r
        judge_r = judge.result_r if judge is not None else None
        limits = request["limits"]
        keep = limits["keep_output_bytes"]
        max_output = limits["max_output_bytes"]
        max_result = limits["max_result_bytes"]
        test_timeout = request["test_timeout_s"]
        job_deadline = started + request["deadline_s"]
        phase_deadline = started + request["load_timeout_s"]
        phase = "load"
        buffers = {out_r: bytearray(), err_r: bytearray()}
        totals = {out_r: 0, err_r: 0}
        lines = {res_r: bytearray(), judge_r: bytearray()}
        result_total = 0
        events, judge_events = [], []
        timed_out = output_limit = False
        program_over = program_done = False
        judge_over = judge is None
        poller = select.poll()
        open_fds = {res_r, out_r, err_r} | ({judge_r} if judge is not None else set())
        for fd in open_fds:
            poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        grace_deadline = None

        def end_program(reason_timeout=False):
            nonlocal program_over, grace_deadline, timed_out
            if reason_timeout:
                timed_out = True
            if not program_over:
                program_over = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                grace_deadline = time.monotonic() + (1.0 if child.in_pidns or judge is not None else 0.05)

        while True:
            if program_done and open_fds & {out_r, err_r}:
                # It flushed its output before reporting done: take what is in the pipes, wait for nothing more.
                for fd in (out_r, err_r):
                    while fd in open_fds and select.select([fd], [], [], 0)[0] and totals[fd] <= max_output:
                        chunk = os.read(fd, 1 << 16)
                        if not chunk:
                            break
                        totals[fd] += len(chunk)
                        buffers[fd] += chunk[: max(0, keep - len(buffers[fd]))]
                    if fd in open_fds:
                        open_fds.discard(fd)
                        poller.unregister(fd)
            program_finished = program_done or not open_fds & {res_r, out_r, err_r}
            if program_over and program_finished and judge_over:
                break
            now = time.monotonic()
            deadline = grace_deadline if program_over else min(job_deadline, phase_deadline)
            if now >= deadline:
                if program_over:
                    break
                end_program(reason_timeout=True)
                continue
            ready = poller.poll(max(1, int((deadline - now) * 1000) + 1))
            for fd, _ in ready:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    if not program_over:
                        program_over = True
                        grace_deadline = time.monotonic() + (1.0 if child.in_pidns else 0.05)
                    continue
                if fd not in open_fds:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    if fd == judge_r:
                        judge_over = True
                    continue
                if fd in lines:
                    result_total += len(chunk)
                    if result_total > max_result:
                        output_limit = True
                        break
                    buffer = lines[fd]
                    buffer += chunk
                    *complete, rest = bytes(buffer).split(b"\n")
                    lines[fd] = bytearray(rest)
                    for line in complete:
                        event = _parse_event(line)
                        if event is None:
                            continue
                        kind = event.get("e")
                        if fd == judge_r:
                            judge_events.append(event)
                            if kind == "judge_done":
                                judge_over = True
                        else:
                            events.append(event)
                            if kind == "done":
                                program_done = True
                                end_program()
                        if kind in ("loaded", "value", "fail", "served", "verdict"):
                            # progress: the next test starts now and has its own time
                            phase = event.get("k", phase) if kind != "loaded" else "tests"
                            phase_deadline = time.monotonic() + test_timeout
                else:
                    totals[fd] += len(chunk)
                    room = keep - len(buffers[fd])
                    if room > 0:
                        buffers[fd] += chunk[:room]
                    if totals[fd] > max_output:
                        output_limit = True
                        break
            if output_limit:
                end_program()
                break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if judge is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(judge.pid, signal.SIGKILL)
        status = _exit_status(child, wait=not program_done)
        if not child.in_pidns:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return {
            "events": events,
            "judge_events": judge_events,
            "stdout": bytes(buffers[out_r]).decode("utf-8", "replace"),
            "stderr": bytes(buffers[err_r]).decode("utf-8", "replace"),
            "stdout_total": totals[out_r],
            "exit_code": status if status is not None and status >= 0 else None,
            "signal": -status if status is not None and status < 0 else None,
            "timed_out": timed_out,
            "timeout_phase": phase if timed_out else None,
            "output_limit": output_limit,
            "wall_s": time.monotonic() - started,
        }

    def close(self):
        self.reap()
        if self.prepared is not None:
            self.prepared.close()
            self.prepared = None
        if "scratch_tmpfs" in self.isolation.features:
            _libc.umount2(os.fsencode(self.scratch_root), MNT_DETACH)
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def _exit_status(child, wait):
    """The child's exit code (negative: killed by that signal); None when it reported all it had and was killed
    without being waited for (it is reaped after the reply, see :meth:`Server.reap`)."""
    if not wait:
        return None
    _, status = os.waitpid(child.pid, 0)
    child.reaped = True
    return os.waitstatus_to_exitcode(status)


class _Prepared:
    """A forked child (waiting for its job, running it, or the job's judge), and the server's ends of its pipes."""

    def __init__(self, pid, pidfd, request_w, result_r, out_r, err_r, in_pidns, preset_limits, job_dir):
        self.pid, self.pidfd, self.in_pidns, self.preset_limits = pid, pidfd, in_pidns, preset_limits
        self.job_dir = job_dir
        self.request_w, self.result_r, self.out_r, self.err_r = request_w, result_r, out_r, err_r
        self.judge_ends = ()
        self.reaped = False

    def close_judge_ends(self):
        for fd in self.judge_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.judge_ends = ()

    def close(self):
        """Release the pipes; a child that was never reaped (unused, or its supervision failed) is killed first."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.reaped = True
        self.close_judge_ends()
        for fd in (self.request_w, self.result_r, self.out_r, self.err_r, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.request_w = self.result_r = self.out_r = self.err_r = self.pidfd = None


def _within(limits, preset):
    """Whether a child that set ``preset`` ahead (None: nothing) can still set ``limits``: none of them is higher."""
    if preset is None or limits is None:
        return preset is None
    return all(limits[key] <= preset[key] for key, _ in RLIMITS if key is not None)


def _deliver(fd, body):
    """Hand the job to its prepared child (the request as the owner sent it); False if it died."""
    try:
        _send_body(fd, body)
    except BrokenPipeError:
        return False
    return True


def _unread(fd):
    """Bytes written to a pipe that its reader has not read."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _remove_tree(path):
    """Remove a job directory and what the job left in it, raising what stops that."""
    try:
        os.rmdir(path)  # the usual job leaves nothing: one syscall instead of a tree walk
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path)


def _stdin_from(text):
    """Make fd 0 a private in-memory file holding ``text``: nothing of it is visible in the scratch tree."""
    fd = os.memfd_create("stdin")
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    while data:
        data = data[os.write(fd, data) :]
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)


def _parse_event(line):
    if len(line) > (8 << 20):
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _vm_size():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main():
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.set_inheritable(in_fd, False)
    os.set_inheritable(out_fd, False)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    config = _recv(in_fd)
    if config is None:
        return
    if os.getppid() != config["owner_pid"]:
        return
    server = Server(config, out_fd)
    try:
        hello = server.start()
    except Exception as exc:
        _send(out_fd, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        server.close()
        return
    _send(out_fd, hello)
    try:
        while True:
            # A failure to prepare is reported by the run that needs the child, which prepares again.
            with contextlib.suppress(Exception):
                server.prepare()
            body = _recv_body(in_fd)
            if body is None:
                break
            request = json.loads(body)
            if request.get("op") == "close":
                break
            # A run is three frames: this control message, the program child's request, the judge's (maybe empty).
            child_body, judge_body = _recv_body(in_fd), _recv_body(in_fd)
            if child_body is None or judge_body is None:
                break
            try:
                reply = server.run(request, child_body, judge_body)
            except Exception as exc:
                reply = {"sandbox_error": f"{type(exc).__name__}: {exc}"}
            _send(out_fd, reply)
            with contextlib.suppress(Exception):
                server.reap()
    finally:
        server.close()


if __name__ == "__main__":
    main()
