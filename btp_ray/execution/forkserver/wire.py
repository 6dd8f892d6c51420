"""What travels on the fork server's pipes, and on which descriptor: framed JSON messages and JSON event lines.

- Between the owner and the server (the server's stdin/stdout), and from the server to a prepared child: a 4-byte
  big-endian length and a UTF-8 JSON body per message (:func:`recv`, :func:`send`, or the raw body).
- Between the judge child and the program child (:data:`CALLS_FD`, :data:`REPLIES_FD`): the same framing, read with a
  size cap and a malformed message read as none (:func:`recv_message`, :func:`send_message`), as either end may be
  hostile.
- From each child to the server (:data:`RESULT_FD`): one JSON object per line, an event (:func:`emitter`), which the
  server parses without trusting it (:func:`parse_event`).

:func:`write_all` and :func:`read_exact` bind ``os.write`` and ``os.read`` when defined, and :func:`emitter` binds
what it calls when a child makes it, before any untrusted code runs: a program that patches ``os`` or ``json`` does
not change how its events reach the server.
"""

import json
import os
import struct

RESULT_FD = 3  # a child's events to the server
REQUEST_FD = 4  # a prepared child reads its job here
CALLS_FD = 5  # program child: calls from the judge;   judge child: calls to the program
REPLIES_FD = 6  # program child: replies to the judge;  judge child: replies from the program
MAX_MESSAGE_BYTES = 64 << 20
MAX_EVENT_BYTES = 8 << 20


def write_all(fd, data, write=os.write):
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]


def read_exact(fd, n, read=os.read):
    chunks = []
    while n:
        chunk = read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------------- owner <-> server, server -> child
def recv_body(fd):
    """The body of the next message, or None at end of file."""
    header = read_exact(fd, 4)
    if header is None:
        return None
    return read_exact(fd, struct.unpack(">I", header)[0])


def recv(fd):
    body = recv_body(fd)
    return None if body is None else json.loads(body)


def send_body(fd, body):
    write_all(fd, struct.pack(">I", len(body)) + body)


def send(fd, obj):
    send_body(fd, json.dumps(obj, ensure_ascii=True).encode())


# ------------------------------------------------------------------------------------------ judge <-> program child
def recv_message(fd):
    """One length-prefixed JSON message, or None at end of file or for a malformed or oversized one."""
    header = read_exact(fd, 4)
    if header is None:
        return None
    size = struct.unpack(">I", header)[0]
    if size > MAX_MESSAGE_BYTES:
        return None
    body = read_exact(fd, size)
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def send_message(fd, message):
    body = json.dumps(message, ensure_ascii=True).encode()
    write_all(fd, struct.pack(">I", len(body)) + body)


# -------------------------------------------------------------------------------------------------- child -> server
def emitter(fd):
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


def parse_event(line):
    """The event on one line a child wrote, or None for a line that is too long, not JSON or not an object."""
    if len(line) > MAX_EVENT_BYTES:
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None
