"""The sandbox's strict typed encoding of values, between its children and the owner.

Loaded with the fork server (standard library only). The encoding carries builtin values of exact types (``int``,
``float``, ``str``, ``bytes``, ``complex``, ``None``, ``bool`` and the containers), numpy scalars and arrays (by dtype,
rebuilt by the receiver's own numpy), ranges and builtin iterators (as their items), modules (by name) and, for any
other object, a handle: the object stays where it is and only its index travels. Decoding builds nothing but those; it
never runs code from the message. See ``harness.py`` for who sends what, ``wire.py`` for how it is framed.
"""

import itertools
import re
import sys
import traceback

MAX_NODES = 200_000
MAX_DEPTH = 100
_NUMPY_KINDS = frozenset("biufcUS")
_DTYPE = re.compile(r"^[<>|=]?[biufcUS][0-9]{1,4}$")


def error_line(exc):
    """The last line of the exception's report (``ValueError: ...``), at most 2,000 characters."""
    try:
        lines = traceback.format_exception_only(type(exc), exc)
        text = lines[-1].strip() if lines else type(exc).__name__
    except BaseException:
        text = type(exc).__name__
    return text[:2000]


TRUSTED_PACKAGES = {"numpy"}  # besides the standard library; the server adds the modules it preloads
# Modules a name of the program may stand for in the judge (the judge's own import, e.g. a test's ``math.isclose``
# or MBPP's ``sys.getsizeof`` where the program did the import): those a test plausibly uses that way.
JUDGE_MODULES = frozenset(
    (
        "sys",
        "errno",
        "math",
        "cmath",
        "collections",
        "itertools",
        "functools",
        "heapq",
        "bisect",
        "string",
        "statistics",
        "fractions",
        "decimal",
        "datetime",
        "operator",
        "typing",
        "re",
        "copy",
        "json",
        "numpy",
    )
)


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
    standing for a handle; ``resolve_reference(module, qualname)`` (qualname None for the module itself) returns the
    decoding side's own object for a reference by name, or None (then a function or class is its handle). The builtins
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
