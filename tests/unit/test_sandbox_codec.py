"""The judge's side of the value channel, without a sandbox: what a program child's reply can become in the judge.

The codec and the harness are modules of the fork server (``forkserver/codec.py``, ``forkserver/harness.py``); here
they are exercised in-process on hand-made replies, as a hostile program child could send them.
"""

from __future__ import annotations

import numpy as np
import pytest

from btp_ray.execution.forkserver import codec, harness


def _judge_decode(encoded):
    channel = harness.Channel(codec.build_encoder(), np)
    return channel.decode(encoded)


def test_builtin_values_numpy_and_iterators_are_rebuilt_by_the_judge():
    encode = codec.build_encoder()
    value = {"a": [1, 2.5, "x", None, (True, b"\x00")], 3: frozenset({1})}
    assert _judge_decode(encode(value)) == value
    scalar = _judge_decode(encode(np.int64(7)))
    assert type(scalar) is np.int64 and scalar == 7
    array = _judge_decode(encode(np.arange(6).reshape(2, 3)))
    assert type(array) is np.ndarray and array.shape == (2, 3) and array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert list(_judge_decode(encode(x * x for x in range(3)))) == [0, 1, 4]
    assert _judge_decode(encode(range(2, 9, 3))) == range(2, 9, 3)


def test_objects_of_the_program_are_opaque_handles_that_refuse_to_be_judged():
    class Same(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    handles: list = []
    handle = _judge_decode(codec.build_encoder()(Same("x"), handles))
    assert isinstance(handle, harness.ProgramObject) and handles[0] == "x"
    for judged in (lambda h: h == "x", lambda h: h != "x", lambda h: bool(h), len, hash, list, lambda h: "x" in h):
        with pytest.raises(TypeError, match="Same object of the program is not a plain builtin value"):
            judged(handle)
    assert repr(handle).startswith("<program ") and repr(handle).endswith(".Same object>")


def test_malformed_or_hostile_replies_are_refused():
    for reply in (
        ["o"],
        ["i", 5],
        ["l", "x"],
        ["N", "O", ["n"]],  # an object dtype would let the program's objects in
        ["A", "<i8", [10**9], ["l", []]],  # shape that does not fit the data
        ["d", [[["l", []], ["n"]]]],  # unhashable key
        ["m", "os"],  # the judge takes only a few stateless modules from the program's names
        ["m", "__main__"],
        ["zz"],
    ):
        with pytest.raises(codec.ValueError_):
            _judge_decode(reply)
    deep = ["n"]
    for _ in range(200):
        deep = ["l", [deep]]
    with pytest.raises(codec.ValueError_, match="too large"):
        _judge_decode(deep)


def test_a_module_the_program_imported_is_the_judges_own_and_a_function_never_is():
    assert _judge_decode(["m", "math"]) is __import__("math")
    # A program function that claims to be math.isclose stays the program's: a handle, never the judge's isclose.
    claimed = _judge_decode(["k", "math", "isclose", ["h", 4, "function"]])
    assert isinstance(claimed, harness.ProgramObject)
