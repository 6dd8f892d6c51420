"""What runs inside the sandbox's children: the value channel, the program harness and the judge harness.

Loaded by ``_server.py`` (from its own directory, with the standard library only) before it forks anything. Two kinds
of child run a job:

- the **program child** executes the untrusted program and nothing of the tests but their direct calls: for a test
  ``assert f(<literals>) <op> <literal>`` it calls ``f`` and reports the value in a strict typed encoding (the
  comparison is made by the owner, outside the sandbox); for every other test it serves calls from the judge.
- the **judge child** runs the test code (the job's ``test_setup``, each test's ``setup`` and its statements) and never
  executes the program's code. Whatever the tests call of the program (the entry point, a class of the program, an
  attribute of a program object) is a call over a channel to the program child, which answers with typed builtin
  values only: ``int``, ``float``, ``str``, containers of them, numpy scalars and arrays (rebuilt by the judge's own
  numpy), iterators (rebuilt as iterators over their items). Any other object of the program stays in the program
  child; the judge holds an opaque :class:`ProgramObject` for it that can be passed back, called or have attributes
  read and set, but never compared, hashed, tested for truth, measured or iterated. Modules (and their functions and
  classes) the program refers to are the judge's own imports of the standard library, never the program's.

So the test's helpers, the builtins and the stdlib modules the test uses live in a process the program cannot reach
(its own uid, Landlock domain and no dumpable memory), and no object of the program takes part in a judgement.
"""

import builtins
import itertools
import json
import os
import re
import struct
import sys
import traceback

RESULT_FD = 3
CALLS_FD = 5  # program child: calls from the judge;   judge child: calls to the program
REPLIES_FD = 6  # program child: replies to the judge;  judge child: replies from the program
MAX_MESSAGE_BYTES = 64 << 20
MAX_NODES = 200_000
MAX_DEPTH = 100
_NUMPY_KINDS = frozenset("biufcUS")
_DTYPE = re.compile(r"^[<>|=]?[biufcUS][0-9]{1,4}$")
_UNREACHABLE = ("__dict__", "__class__", "__globals__", "__code__", "__closure__", "__builtins__")


# ----------------------------------------------------------------------------------------------------- framing
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


def error_line(exc):
    try:
        lines = traceback.format_exception_only(type(exc), exc)
        text = lines[-1].strip() if lines else type(exc).__name__
    except BaseException:
        text = type(exc).__name__
    return text[:2000]


TRUSTED_PACKAGES = {"numpy"}  # besides the standard library; the server adds the modules it preloads


def _trusted_module_name(name):
    """Whether the judge may use its own import of module ``name``: the standard library and the preloaded packages,
    never ``__main__`` (in the judge, the server script)."""
    if type(name) is not str or not name or name == "__main__":
        return False
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top in TRUSTED_PACKAGES


# ------------------------------------------------------------------------------------------------------ encoding
def build_encoder():
    """``encode(value, handles)``: a typed encoding of builtin values (exact types). Objects that are not builtin
    values become handles (their index in ``handles``; -1 when ``handles`` is None), modules and stdlib functions
    become references by name, builtin iterators the list of their items."""
    numpy = sys.modules.get("numpy")
    numpy_scalars = frozenset()
    ndarray = None
    if numpy is not None:
        numpy_scalars = frozenset(t for t in set(numpy.sctypeDict.values()) if t.__module__ == "numpy")
        ndarray = numpy.ndarray
    float_repr = float.__repr__
    plain_bases = (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
    # Subclasses that keep their base's comparisons are encoded as the base (namedtuple, OrderedDict, ...).
    base_copy = {
        bool: bool.__bool__,
        int: int.__index__,
        float: float.__float__,
        complex: lambda v: complex(complex.__getattribute__(v, "real"), complex.__getattribute__(v, "imag")),
        str: str.__str__,
        bytes: lambda v: bytes(memoryview(v)),
        list: lambda v: list(list.__iter__(v)),
        tuple: lambda v: tuple(tuple.__iter__(v)),
        dict: lambda v: dict(dict.items(v)),
        set: lambda v: set(set.__iter__(v)),
        frozenset: lambda v: frozenset(frozenset.__iter__(v)),
    }
    import collections
    import types

    trusted_dicts = frozenset((collections.OrderedDict, collections.Counter, collections.defaultdict))
    compared = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__", "__hash__")
    empty = {}
    iterators = frozenset(
        type(x)
        for x in (
            (i for i in ()),
            map(int, ()),
            filter(None, ()),
            zip(),
            enumerate(()),
            reversed(()),
            iter([]),
            iter(()),
            iter(""),
            iter(range(0)),
            iter(set()),
            iter(empty),
            iter(empty.values()),
            iter(empty.items()),
            empty.keys(),
            empty.values(),
            empty.items(),
        )
    )
    routines = frozenset((types.FunctionType, types.BuiltinFunctionType, type))

    def _plain(t):
        base = next(b for b in plain_bases if issubclass(t, b))
        return all(getattr(t, name, None) is getattr(base, name, None) for name in compared)

    def encode(value, handles=None):
        budget = [MAX_NODES]

        def handle(x, t):
            name = str(type.__dict__["__qualname__"].__get__(t))[:100]
            if handles is None:
                return ["h", -1, name]
            handles.append(x)
            return ["h", len(handles) - 1, name]

        def enc(x, depth):
            budget[0] -= 1
            if budget[0] < 0 or depth > MAX_DEPTH:
                raise OverflowError("value too large or too deeply nested to report")
            t = type(x)
            if t is bool:
                return ["b", x is True]
            if t is int:
                return ["i", int.__format__(x, "x")]
            if t is float:
                return ["f", float_repr(x)]
            if t is str:
                return ["s", x]
            if x is None:
                return ["n"]
            if t is list:
                return ["l", [enc(v, depth + 1) for v in list.__iter__(x)]]
            if t is tuple:
                return ["t", [enc(v, depth + 1) for v in tuple.__iter__(x)]]
            if t is dict:
                return ["d", [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in dict.items(x)]]
            if t is set:
                return ["S", [enc(v, depth + 1) for v in set.__iter__(x)]]
            if t is frozenset:
                return ["F", [enc(v, depth + 1) for v in frozenset.__iter__(x)]]
            if t is bytes:
                return ["y", bytes.hex(x)]
            if t is complex:
                return ["c", float_repr(x.real), float_repr(x.imag)]
            if t in numpy_scalars:
                return ["N", x.dtype.str, enc(x.item(), depth + 1)]
            if t is ndarray and x.dtype.kind in _NUMPY_KINDS:
                return ["A", x.dtype.str, list(x.shape), enc(x.tolist(), depth + 1)]
            if t is range:
                return ["r", int.__format__(x.start, "x"), int.__format__(x.stop, "x"), int.__format__(x.step, "x")]
            if t in iterators:
                return ["I", [enc(v, depth + 1) for v in itertools.islice(x, budget[0] + 1)]]
            if t is types.ModuleType:
                return ["m", str(x.__name__)]
            if t in routines:
                module, qualname = getattr(x, "__module__", None), getattr(x, "__qualname__", None)
                if type(module) is str and type(qualname) is str and _trusted_module_name(module):
                    return ["k", module, qualname, handle(x, t)]
                return handle(x, t)
            if t in trusted_dicts or (type(t) is type and issubclass(t, plain_bases) and _plain(t)):
                for base in plain_bases:
                    if issubclass(t, base):
                        return enc(base_copy[base](x), depth)
            return handle(x, t)

        return enc(value, 0)

    return encode


# ------------------------------------------------------------------------------------------------------ decoding
class ValueError_(ValueError):
    """A malformed value on the channel."""


def build_decoder(numpy, make_handle, resolve_reference):
    """``decode(encoded)``: builtin values from the typed encoding. ``make_handle(id, type_name)`` builds the object
    standing for a handle; ``resolve_reference(module, qualname)`` returns a trusted object or None. The builtins
    are bound now: in the program child, a program that patches them still gets its arguments whole."""
    _list, _tuple, _set, _frozenset, _iter, _type, _int, _float, _complex, _range = (
        list,
        tuple,
        set,
        frozenset,
        iter,
        type,
        int,
        float,
        complex,
        range,
    )
    containers = {"l": _list, "t": _tuple, "S": _set, "F": _frozenset, "I": _iter}
    fromhex, _str, _bool, _len, _all = bytes.fromhex, str, bool, len, all

    def decode(encoded):
        budget = [MAX_NODES * 2]

        def dec(node, depth):
            budget[0] -= 1
            if budget[0] < 0 or depth > MAX_DEPTH + 20:
                raise ValueError_("value too large")
            if _type(node) is not _list or not node or _type(node[0]) is not _str:
                raise ValueError_("malformed value")
            tag, rest = node[0], node[1:]
            if tag == "n" and not rest:
                return None
            if tag == "b" and _type(rest[0]) is _bool:
                return rest[0]
            if tag == "i" and _type(rest[0]) is _str:
                return _int(rest[0], 16)
            if tag == "f" and _type(rest[0]) is _str:
                return _float(rest[0])
            if tag == "s" and _type(rest[0]) is _str:
                return rest[0]
            if tag == "y" and _type(rest[0]) is _str:
                return fromhex(rest[0])
            if tag == "c" and _type(rest[0]) is _str and _type(rest[1]) is _str:
                return _complex(_float(rest[0]), _float(rest[1]))
            if tag in ("l", "t", "S", "F", "I") and _type(rest[0]) is _list:
                items = [dec(item, depth + 1) for item in rest[0]]
                return containers[tag](items)
            if tag == "d" and _type(rest[0]) is _list:
                out = {}
                for pair in rest[0]:
                    if _type(pair) is not _list or _len(pair) != 2:
                        raise ValueError_("malformed value")
                    out[dec(pair[0], depth + 1)] = dec(pair[1], depth + 1)
                return out
            if tag == "r" and _all(_type(v) is _str for v in rest[:3]):
                return _range(_int(rest[0], 16), _int(rest[1], 16), _int(rest[2], 16))
            if tag in ("N", "A") and numpy is not None and _type(rest[0]) is _str and _DTYPE.match(rest[0]):
                dtype = numpy.dtype(rest[0])
                if tag == "N":
                    return dtype.type(dec(rest[1], depth + 1))
                shape = rest[1]
                if _type(shape) is not _list or not _all(_type(d) is _int and d >= 0 for d in shape):
                    raise ValueError_("malformed array")
                return numpy.array(dec(rest[2], depth + 1), dtype=dtype).reshape(shape)
            if tag == "h" and _type(rest[0]) is _int and _type(rest[1]) is _str:
                return make_handle(rest[0], rest[1])
            if tag == "m" and _type(rest[0]) is _str:
                found = resolve_reference(rest[0], None)
                if found is None:
                    raise ValueError_(f"the program's module {rest[0][:100]!r} is not available to the tests")
                return found
            if tag == "k" and _type(rest[0]) is _str and _type(rest[1]) is _str:
                found = resolve_reference(rest[0], rest[1])
                return found if found is not None else dec(rest[2], depth + 1)
            raise ValueError_("malformed value")

        try:
            return dec(encoded, 0)
        except ValueError_:
            raise
        except (IndexError, TypeError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
            raise ValueError_(f"malformed value: {type(exc).__name__}") from None

    return decode


def resolve_trusted(module_name, qualname):
    """The trusted process's own module (or object within it) for a name the program reported, or None."""
    if not _trusted_module_name(module_name):
        return None
    try:
        module = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
        if qualname is None:
            return module
        obj = module
        for part in qualname.split("."):
            if part.startswith("__") or part.startswith("<"):
                return None
            obj = getattr(obj, part)
        return obj
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------ program child
def run_program(request, encode, emit, exit_now):
    """Body of the program child (untrusted code from here on): load the program, run the direct calls, serve the
    judge's calls for the other tests, in test order. Reports events on RESULT_FD; ends with ``done``."""
    _exec, _compile, _range, _len, _isinstance, _type = exec, compile, range, len, isinstance, type
    _getattr, _setattr, _sys, is_mem = getattr, setattr, sys, MemoryError
    recv, send = recv_message, send_message

    def flush_std():
        for stream in (_sys.stdout, _sys.stderr):
            try:  # noqa: SIM105 - bound before the program runs, unlike contextlib.suppress
                stream.flush()
            except BaseException:
                pass

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    handles = []

    def handle_of(i, _name):
        if not 0 <= i < _len(handles):
            raise ValueError_("unknown handle")
        return handles[i]

    decode = build_decoder(_sys.modules.get("numpy"), handle_of, resolve_trusted)
    mode = request["mode"]
    try:
        code = _compile(request["program"], "<program>", "exec")
    except BaseException as exc:
        emit({"e": "compile_error", "err": error_line(exc)})
        exit_now(0)
    try:
        if mode == "stdio":
            try:
                _exec(code, namespace)
            except SystemExit as stop:
                if stop.code not in (None, 0):
                    raise
            flush_std()
            emit({"e": "loaded"})
            flush_std()
            emit({"e": "done"})
            exit_now(0)
        _exec(code, namespace)
        if request.get("test_setup"):
            _exec(_compile(request["test_setup"], "<test_setup>", "exec"), namespace)
    except BaseException as exc:
        flush_std()
        emit({"e": "load_error", "err": error_line(exc), "mem": _isinstance(exc, is_mem)})
        exit_now(0)
    flush_std()
    emit({"e": "loaded"})

    def call_program(fn, args, kwargs):
        """The program's ``fn`` (a method of its ``Solution`` class for APPS call tests), else the builtin."""
        func = namespace.get(fn)
        if func is None and _isinstance(namespace.get("Solution"), _type):
            func = _getattr(namespace["Solution"](), fn, None)
        if func is None:
            func = _getattr(builtins, fn, None)
        if func is None:
            raise NameError(f"name {fn!r} is not defined")
        return func(*args, **kwargs)

    judge_gone = [False]

    def serve(k):
        """Answer the judge's calls for test ``k`` until it ends the test (or goes away)."""
        while not judge_gone[0]:
            message = recv(CALLS_FD)
            if _type(message) is not dict:
                judge_gone[0] = True
                return
            op = message.get("op")
            if op == "end":
                return
            try:
                if op == "globals":
                    reply = {"v": {n: encode(namespace[n], handles) for n in message["names"] if n in namespace}}
                else:
                    target = handles[message["h"]]
                    if op == "call":
                        args = decode(message["args"])
                        kwargs = decode(message["kwargs"])
                        value = target(*args, **kwargs)
                    elif op == "getattr":
                        value = _getattr(target, message["name"])
                    elif op == "setattr":
                        value = _setattr(target, message["name"], decode(message["v"]))
                    else:
                        raise ValueError(f"unknown operation {op!r}")
                    reply = {"v": encode(value, handles)}
            except BaseException as exc:
                reply = {
                    "err": error_line(exc),
                    "exc": _type(exc).__name__,
                    "mem": _isinstance(exc, is_mem),
                    "base": not _isinstance(exc, Exception),
                }
            flush_std()
            try:
                send(REPLIES_FD, reply)
            except OSError:
                judge_gone[0] = True

    tests = request["tests"]
    for k in _range(request["start"], _len(tests)):
        test = tests[k]
        try:
            if test["kind"] == "judge":
                serve(k)
                result = {"e": "served", "k": k}
            else:
                value = call_program(test["fn"], decode(test["args"]), decode(test.get("kwargs") or ["d", []]))
                result = {"e": "value", "k": k, "v": encode(value)}
        except BaseException as exc:
            result = {"e": "fail", "k": k, "err": error_line(exc), "mem": _isinstance(exc, is_mem)}
        flush_std()
        emit(result)
    flush_std()
    emit({"e": "done"})
    exit_now(0)


# ------------------------------------------------------------------------------------------------- judge child
class ProgramGone(BaseException):
    """The program child went away (crashed, was killed, or broke the channel) during a call."""


class ProgramExit(BaseException):
    """The program raised something that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, ...)."""


class ProgramError(Exception):
    """The program raised an exception that is not one of the builtin exception classes."""


class ProgramObject:
    """An object of the program, which stays in the program child. It can be passed back to the program, called and
    have attributes read and set (each a call over the channel); anything that would let it take part in a
    judgement (comparison, hashing, truth, length, iteration, conversion) raises ``TypeError``."""

    __slots__ = ("_channel", "_id", "_type")

    def __init__(self, channel, handle_id, type_name):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_id", handle_id)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        return self._channel.request({"op": "call", "h": self._id, "args": args, "kwargs": kwargs})

    def __getattr__(self, name):
        if name.startswith("__") or name in _UNREACHABLE:
            raise AttributeError(name)
        return self._channel.request({"op": "getattr", "h": self._id, "name": name})

    def __setattr__(self, name, value):
        self._channel.request({"op": "setattr", "h": self._id, "name": name, "v": value})

    def __repr__(self):
        return f"<program {self._type} object>"

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"a {self._type} object of the program is not a plain builtin value")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __hash__ = __index__ = __int__ = __float__ = __getitem__ = __setitem__ = _refuse


class Channel:
    """The judge's end of the channel to the program child."""

    def __init__(self, encode, numpy):
        self.encode = encode
        self.gone = False
        self.decode = build_decoder(numpy, lambda i, name: ProgramObject(self, i, name), resolve_trusted)

    def _arg(self, value):
        """The encoding of a value the test passes to the program: its ProgramObjects go back as their handles."""
        if type(value) is ProgramObject:
            return ["h", object.__getattribute__(value, "_id"), ""]
        if type(value) in (list, tuple) and any(type(v) is ProgramObject for v in value):
            return ["l" if type(value) is list else "t", [self._arg(v) for v in value]]
        if type(value) is dict and any(type(v) is ProgramObject for v in value.values()):
            return ["d", [[self.encode(k), self._arg(v)] for k, v in value.items()]]
        encoded = self.encode(value)
        if _contains_foreign_object(encoded):
            raise TypeError(f"a {type(value).__name__} object cannot be passed to the program")
        return encoded

    def request(self, message):
        if "args" in message:
            message["args"] = ["t", [self._arg(v) for v in message["args"]]]
            message["kwargs"] = ["d", [[["s", k], self._arg(v)] for k, v in message["kwargs"].items()]]
        if "v" in message:
            message["v"] = self._arg(message["v"])
        reply = self._exchange(message)
        if "err" in reply:
            raise _program_exception(reply)
        try:
            return self.decode(reply.get("v"))
        except ValueError_ as exc:
            raise TypeError(f"the program returned {exc}") from None

    def globals(self, names):
        if not names:
            return {}
        values = self._exchange({"op": "globals", "names": names}).get("v")
        if type(values) is not dict:
            return {}
        found = {}
        for name in names:
            if name in values:
                try:
                    found[name] = self.decode(values[name])
                except ValueError_:
                    continue  # a name the tests cannot use is left undefined (NameError if a test uses it)
        return found

    def end(self, k):
        if self.gone:
            raise ProgramGone()
        try:
            send_message(CALLS_FD, {"op": "end", "k": k})
        except OSError:
            self.gone = True
            raise ProgramGone() from None

    def _exchange(self, message):
        """Send one request and read its reply; once the program child has gone, every call raises ProgramGone
        (a test that catches it still cannot pass: the judge checks ``gone`` after each test)."""
        if self.gone:
            raise ProgramGone()
        try:
            send_message(CALLS_FD, message)
            reply = recv_message(REPLIES_FD)
        except OSError:
            reply = None
        if type(reply) is not dict:
            self.gone = True
            raise ProgramGone()
        return reply


def _contains_foreign_object(encoded):
    """Whether an encoding of the judge's own value holds an object the program could not rebuild (a judge-side
    object that is not a builtin value, a stdlib module or one of their functions or classes)."""
    if type(encoded) is not list or not encoded:
        return False
    if encoded[0] == "h":
        return True
    if encoded[0] == "k":
        return False  # rebuilt by name on the program's side; its handle part is never used there
    return any(_contains_foreign_object(item) for item in encoded[1:] if type(item) is list)


_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), Exception)
)


def _program_exception(reply):
    text = str(reply.get("err", "the program raised"))[:2000]
    if reply.get("mem") is True:
        exc = ProgramError(text)
        exc.memory = True
        exc.program_text = text
        return exc
    if reply.get("base") is True:
        exc = ProgramExit(text)
        exc.program_text = text
        return exc
    name = reply.get("exc")
    exc = ProgramError(text)
    if type(name) is str and name in _BUILTIN_EXCEPTIONS:
        try:  # the builtin class, so that a test expecting (say) a ValueError from the program still sees one
            exc = getattr(builtins, name)(text.split(": ", 1)[1] if ": " in text else "")
        except Exception:
            exc = ProgramError(text)
    exc.program_text = text
    return exc


def run_judge(spec, encode, emit, exit_now):
    """Body of the judge child: run each test's code on the trusted side, calling the program over the channel; emit
    one verdict per test (or ``gone`` when the program child went away), then ``judge_done``."""
    channel = Channel(encode, sys.modules.get("numpy"))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    setup_error = None
    setup_done = False
    for test in spec["tests"]:
        k = test["k"]
        try:
            namespace.update(channel.globals([n for n in test["names"] if n not in namespace]))
            if not setup_done:
                setup_done = True
                if spec.get("test_setup"):
                    try:
                        exec(compile(spec["test_setup"], "<test_setup>", "exec"), namespace)
                    except ProgramGone:
                        raise
                    except BaseException as exc:
                        setup_error = "test setup failed: " + error_line(exc)
            if setup_error is not None:
                raise RuntimeError(setup_error)
            if test.get("setup"):
                exec(compile(test["setup"], f"<setup {k}>", "exec"), namespace)
            exec(compile(test["code"], f"<test {k}>", "exec"), namespace)
            if channel.gone:
                raise ProgramGone()
            verdict = {"e": "verdict", "k": k, "ok": True}
        except BaseException as exc:
            if channel.gone:
                emit({"e": "gone", "k": k})
                break
            memory = isinstance(exc, MemoryError) or getattr(exc, "memory", False) is True
            text = getattr(exc, "program_text", None)
            verdict = {"e": "verdict", "k": k, "ok": False, "err": text or error_line(exc), "mem": memory}
        try:
            channel.end(k)
        except ProgramGone:
            emit(verdict)
            break
        emit(verdict)
    emit({"e": "judge_done"})
    exit_now(0)
