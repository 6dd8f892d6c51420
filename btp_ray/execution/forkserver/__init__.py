"""The sandbox's fork server: a small trusted process that forks one isolated child per run of untrusted code.

Run as a script (``python -I forkserver/__main__.py``, by :class:`btp_ray.execution.sandbox.Sandbox`), which loads
this folder by path as the package ``_btp_forkserver``: these modules use the standard library only and import one
another relatively, never from btp_ray. Imported by tests as ``btp_ray.execution.forkserver``. This file imports
nothing, so that loading the package in the server costs nothing.

- ``server.py``: the server loop, the prepared children and the replies;
- ``children.py``: a job's children as forked (the program child up to its harness, the judge child);
- ``supervise.py``: watching a run (events, output, wall clock) and its raw capture;
- ``isolation.py``: namespaces, mounts, the sandbox uid, rlimits, Landlock; ``seccomp.py``: the seccomp filter;
  ``linux.py``: the system calls they make through ctypes;
- ``harness.py``: what runs in the children (the program harness, the judge harness, the channel between them);
- ``codec.py``: the typed encoding of values; ``wire.py``: the framing of messages and events on the pipes.
"""
