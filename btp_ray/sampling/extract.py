"""Program extraction: turn a model's completion into the program the sandbox runs.

Two shapes occur. A raw completion of a HumanEval-style prompt continues the function body: the program is the prompt
plus the completion cut at the next top-level statement (``def``/``class``/``if __name__``/``print`` at column 0).
A chat answer puts the code in a markdown fence: the program is the fenced block that defines the entry point (the
first Python block otherwise), with the prompt's imports and helper definitions (HumanEval/32 defines ``poly`` in the
prompt and its tests use it) added when the answer lacks them.
"""

from __future__ import annotations

import ast
import re

_CODE_START = re.compile(r"^(def |async def |class |import |from \S+ import |@)")
_NON_PYTHON_LANGS = frozenset({"text", "output", "console", "bash", "sh", "shell", "json", "plaintext", "txt"})


def extract_program(completion: str, prompt: str = "", entry_point: str | None = None, *, chat: bool = False) -> str:
    """The runnable program for ``completion`` generated from ``prompt``.

    ``chat`` says the completion answers a chat message (so it is a full answer, not a continuation of ``prompt``).
    ``entry_point`` (the function under test) picks among several code blocks and decides whether the prompt's
    definitions are needed. A raw completion that neither continues the body nor redefines the entry point gives
    the prompt plus its truncated text: a program that fails its tests, as the model did.
    """
    if not chat and _continues_body(completion):
        return prompt + truncate_at_top_level(completion)
    code = _fenced_code(completion, entry_point, require_entry_point=not chat)
    if code is None and (chat or (entry_point and _defines_at_top_level(completion, entry_point))):
        code = _unfenced_code(completion)
    if code is None:
        return prompt + truncate_at_top_level(completion)
    code = truncate_at_top_level(code, keep_definitions=True).strip("\n") + "\n"
    return _with_prompt_context(code, prompt, entry_point)


def truncate_at_top_level(text: str, *, keep_definitions: bool = False) -> str:
    """Cut ``text`` before its first top-level line that ends a function body.

    For a body continuation (``keep_definitions=False``) any non-blank line at column 0 ends it, except a closing
    docstring or bracket. For a whole program (``keep_definitions=True``) imports, definitions, decorators, comments
    and assignments stay; a ``if __name__``, a bare call or ``print`` at top level (example usage) ends it.
    """
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or line[0] in " \t":
            continue
        if keep_definitions:
            if _is_example_usage(stripped):
                return "".join(lines[:index])
            continue
        if stripped[0] in ")]}" or stripped.startswith(('"""', "'''")):
            continue
        return "".join(lines[:index])
    return text


def _is_example_usage(line: str) -> bool:
    if line.startswith(("if __name__", "print(", "assert ", "```")):
        return True
    # A bare call such as ``main()`` or ``solve(3, 4)`` at top level runs example code.
    return re.match(r"^[A-Za-z_][\w.]*\(.*\)\s*$", line) is not None


def _continues_body(completion: str) -> bool:
    """Whether the completion's first non-blank line is indented: it continues the prompt's function."""
    for line in completion.splitlines():
        if line.strip():
            return line[0] in " \t"
    return False


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Markdown fenced blocks as ``(language, body)``, line by line. A bare fence line opens a block or closes the
    open one; a fence line with a language always opens a block, closing the open one first (models write
    "```" then prose then "```python"). A block cut off by the token limit runs to the end."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    body: list[str] = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("```"):
            info = stripped[3:].strip().split(" ")[0].lower()
            if language is not None:
                blocks.append((language, "".join(body)))
                language = None
                if not info:
                    continue
            language, body = info, []
            continue
        if language is not None:
            body.append(line)
    if language is not None and body:
        blocks.append((language, "".join(body)))
    return blocks


def _fenced_code(completion: str, entry_point: str | None, *, require_entry_point: bool) -> str | None:
    blocks = [(lang, body) for lang, body in code_blocks(completion) if lang not in _NON_PYTHON_LANGS and body.strip()]
    if entry_point:
        for _, body in blocks:
            if _defines_at_top_level(body, entry_point):
                return body
        if require_entry_point:
            return None
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else None


def _defines_at_top_level(code: str, name: str) -> bool:
    return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _unfenced_code(completion: str) -> str:
    """A chat answer without a fence: the code starts at the first line that looks like Python code."""
    lines = completion.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if _CODE_START.match(line):
            return "".join(lines[index:])
    return completion


def _with_prompt_context(code: str, prompt: str, entry_point: str | None) -> str:
    """Prepend the prompt's imports and helper definitions that ``code`` lacks."""
    if not prompt.strip():
        return code
    try:
        prompt_tree = ast.parse(prompt)
    except SyntaxError:
        return code
    if entry_point and not _defines(prompt_tree, entry_point):
        # The prompt is prose (MBPP-style), not code the answer completes.
        return code
    defined_in_code = _defined_names(code)
    needed: list[str] = []
    for node in prompt_tree.body:
        segment = ast.get_source_segment(prompt, node)
        if segment is None:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if segment not in code:
                needed.append(segment)
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name != entry_point
            and node.name not in defined_in_code
        ):
            needed.append(_with_decorators(prompt, node, segment))
    if not needed:
        return code
    return "\n".join(needed) + "\n\n\n" + code


def _with_decorators(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, segment: str) -> str:
    decorators = [ast.get_source_segment(source, d) for d in node.decorator_list]
    return "".join(f"@{d}\n" for d in decorators if d) + segment


def _defines(tree: ast.Module, name: str) -> bool:
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name
        for node in tree.body
    )


def _defined_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(re.findall(r"^(?:async\s+)?(?:def|class)\s+(\w+)", code, re.MULTILINE))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
