"""What runs inside the sandbox's children: the value channel, the program harness and the judge harness.

Loaded with the fork server (standard library only) before it forks anything; ``children.py`` prepares each child and
then hands it to :func:`run_program` or :func:`run_judge`. Two kinds of child run a job:

- the **program child** executes the untrusted program and nothing of the tests but their direct calls: for a test
  ``assert f(<literals>) <op> <literal>`` it calls ``f`` and reports the value in a strict typed encoding (the
  comparison is made by the owner, outside the sandbox); for every other test it serves calls from the judge.
- the **judge child** runs the test code (the job's ``test_setup``, each test's ``setup`` and its statements) and never
  executes the program's code. Whatever the tests call of the program (the entry point, a class of the program, an
  attribute of a program object) is a call over a channel to the program child, which answers with typed builtin
  values only: ``int``, ``float``, ``str``, containers of them, numpy scalars and arrays (rebuilt by the judge's own
  numpy), iterators (rebuilt as iterators over their items). Any other object of the program stays in the program
  child; the judge holds an opaque :class:`ProgramObject` for it that can be passed back, called or have attributes
  read and set, but never compared, hashed, tested for truth, measured or iterated. A module the program imported
  and the test uses by the program's name for it (``math`` in ``math.isclose``) is the judge's own import of it,
  never the program's, and only for modules without state a test could be made to change (:data:`JUDGE_MODULES`).

So the test's helpers, the builtins and the stdlib modules the test uses live in a process the program cannot reach
(its own uid, Landlock domain and no dumpable memory), and no object of the program takes part in a judgement.
"""

import builtins
import sys

from .codec import JUDGE_MODULES, ValueError_, build_decoder, error_line, resolve_trusted
from .wire import CALLS_FD, REPLIES_FD, recv_message, send_message


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
_UNREACHABLE = ("__dict__", "__class__", "__globals__", "__code__", "__closure__", "__builtins__")


def _judge_reference(module_name, qualname):
    """What a reference by name from the program is in the judge: its own copy of a module the program imported (in
    :data:`JUDGE_MODULES` only); a function or class of the program stays the program's (a handle), whatever module
    it claims, so that a name can never make the judge run one of its own functions the program chose."""
    if qualname is not None or module_name not in JUDGE_MODULES:
        return None
    return resolve_trusted(module_name, None)


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
        self.decode = build_decoder(numpy, lambda i, name: ProgramObject(self, i, name), _judge_reference)

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
