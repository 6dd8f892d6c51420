"""Program extraction on real outputs of the embedded SmolLM2-135M-Instruct (saved in tests/fixtures/sampling) and on
the shapes other models produce (body continuations, several fences, helper functions from the prompt)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from btp_ray.data import load_problems
from btp_ray.sampling import extract_program
from btp_ray.sampling.extract import code_blocks, truncate_at_top_level

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sampling" / "smollm2_humaneval_outputs.json"


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_problems("humaneval")}


@pytest.fixture(scope="module")
def outputs():
    return json.loads(FIXTURES.read_text())["outputs"]


def _output(outputs, task_id, prompt_format, index=0):
    return [o for o in outputs if o["task_id"] == task_id and o["prompt_format"] == prompt_format][index]


def test_chat_answer_gives_the_fenced_function_with_the_prompts_imports(outputs, humaneval):
    problem = humaneval["HumanEval/0"]
    output = _output(outputs, "HumanEval/0", "chat", 1)  # code block followed by prose
    program = extract_program(output["completion"], problem.prompt, problem.entry_point, chat=True)
    assert program == (
        "from typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(num - threshold) < threshold for num in numbers)\n"
    )
    ast.parse(program)


def test_chat_answer_without_needed_imports_stays_as_is(outputs, humaneval):
    problem = humaneval["HumanEval/2"]
    output = _output(outputs, "HumanEval/2", "chat")
    program = extract_program(output["completion"], problem.prompt, problem.entry_point, chat=True)
    assert program == "def truncate_number(number: float) -> float:\n    return round(number, 10)\n"


def test_truncated_chat_answer_redefining_a_helper_gets_the_missing_import(outputs, humaneval):
    problem = humaneval["HumanEval/32"]  # the prompt defines poly() and imports math
    output = _output(outputs, "HumanEval/32", "chat", 1)
    program = extract_program(output["completion"], problem.prompt, problem.entry_point, chat=True)
    assert program.startswith("import math\n\n\ndef poly(xs: list, x: float) -> float:")
    assert program.count("def poly(") == 1  # the answer's own poly wins; the prompt's is not added twice
    assert "def find_zero(xs: list) -> float:" in program
    assert "```" not in program


def test_chat_answer_that_lacks_a_prompt_helper_gets_it(humaneval):
    problem = humaneval["HumanEval/32"]
    answer = "Sure:\n```python\ndef find_zero(xs: list) -> float:\n    return -xs[0] / xs[1]\n```\nDone."
    program = extract_program(answer, problem.prompt, problem.entry_point, chat=True)
    tree = ast.parse(program)
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == ["poly", "find_zero"]
    assert program.startswith("import math\n")


def test_raw_prose_completion_gives_the_unimplemented_prompt(outputs, humaneval):
    problem = humaneval["HumanEval/7"]
    output = _output(outputs, "HumanEval/7", "raw")  # prose, then an example-usage code block
    program = extract_program(output["completion"], problem.prompt, problem.entry_point, chat=False)
    assert program.startswith(problem.prompt)
    assert "strings = ['a'" not in program  # the example block does not define the entry point
    ast.parse(program)


def test_raw_completion_redefining_a_function_is_cut_at_the_next_top_level_line(outputs, humaneval):
    problem = humaneval["HumanEval/32"]
    output = _output(outputs, "HumanEval/32", "raw")  # starts with "\ndef find_zero" at column 0
    program = extract_program(output["completion"], problem.prompt, problem.entry_point, chat=False)
    assert program.startswith("import math\n")
    assert "find_zero returns only the smallest non zero coefficient" in program
    assert program.count("def find_zero(") == 1


def test_body_continuation_stops_at_the_next_top_level_statement():
    prompt = 'def add(a, b):\n    """Add."""\n'
    completion = (
        "    return a + b\n\n\ndef test():\n    assert add(1, 2) == 3\n\nif __name__ == '__main__':\n    test()\n"
    )
    assert extract_program(completion, prompt, "add") == prompt + "    return a + b\n\n\n"


def test_fenced_block_defining_the_entry_point_is_preferred():
    answer = "```python\nprint(add(1, 2))\n```\n\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```"
    assert extract_program(answer, "", "add", chat=True) == "def add(a, b):\n    return a + b\n"


def test_code_blocks_pairs_fences_line_by_line_and_keeps_an_unterminated_block():
    text = "```\nprose\n```python\nx = 1\n```\n```py\ny = 2\n"
    assert code_blocks(text) == [("", "prose\n"), ("python", "x = 1\n"), ("py", "y = 2\n")]


def test_truncate_keeps_definitions_for_whole_programs():
    program = "import os\n\nX = 1\n\ndef f():\n    return X\n\nprint(f())\n"
    assert truncate_at_top_level(program, keep_definitions=True) == "import os\n\nX = 1\n\ndef f():\n    return X\n\n"
