"""OpenAISampler against a real HTTP server on 127.0.0.1 speaking the OpenAI protocol (stdlib ``http.server`` in a
thread): canned completions per task, with injected 429 (with Retry-After), 500, timeouts and malformed bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from btp_ray.data.types import Problem, TestCase
from btp_ray.sampling import APIAuthError, GenerationParams, SamplerConfig, build_sampler
from btp_ray.sampling.openai_sampler import OpenAISampler

SECRET = "sk-test-SECRET-do-not-log-1234567890"


def _problem(index: int) -> Problem:
    name = f"func_{index}"
    return Problem(
        task_id=f"T/{index}",
        prompt=f'def {name}(x):\n    """Return x plus {index}."""\n',
        tests=(TestCase.assertion(f"assert {name}(1) == {1 + index}"),),
        entry_point=name,
    )


class FakeOpenAI:
    """Replays answers per task; ``faults[task_id]`` lists what the first requests of that task get."""

    def __init__(self, faults: dict[str, list[str]] | None = None, *, logprobs: bool = True, status: int = 200):
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.logprobs = logprobs
        self.status = status
        self.requests: list[dict[str, Any]] = defaultdict(list)  # type: ignore[assignment]
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                task = _task_of(body)
                with fake.lock:
                    fake.requests[task].append(body)
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                    pending = fake.faults.get(task)
                    fault = pending.pop(0) if pending else "ok"
                if fake.status != 200:
                    return self._send(fake.status, {"error": {"message": "denied", "type": "invalid_request_error"}})
                if fault == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if fault == "timeout":
                    time.sleep(1.5)  # longer than the client's request timeout
                    return self._send(
                        200, _completion(body, task, fake.logprobs, chat=self.path.endswith("chat/completions"))
                    )
                if fault == "malformed":
                    raw = b'{"id": "x", "choices": [{"index": 0, "mess'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return None
                if fault == "short":  # fewer choices than asked
                    body = {**body, "n": 1}
                return self._send(
                    200, _completion(body, task, fake.logprobs, chat=self.path.endswith("chat/completions"))
                )

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.wfile.write(raw)

        return Handler


def _task_of(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    index = text.split("def func_", 1)[1].split("(", 1)[0]
    return f"T/{index}"


def _completion(body: dict[str, Any], task: str, logprobs: bool, *, chat: bool) -> dict[str, Any]:
    index = task.split("/")[1]
    choices = []
    for i in range(body.get("n", 1)):
        # Later choices are less likely, so ranking by mean log-prob reverses nothing but is checkable.
        lps = [-0.1 * (i + 1), -0.2 * (i + 1), -0.05]
        code = f"def func_{index}(x):\n    return x + {index}  # choice {i}\n"
        if chat:
            content = f"Here you go:\n```python\n{code}```\n"
            lp = {"content": [{"token": "t", "logprob": v, "bytes": None, "top_logprobs": []} for v in lps]}
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": lp if logprobs else None,
                }
            )
        else:
            lp = {"tokens": ["a", "b", "c"], "token_logprobs": lps, "top_logprobs": None, "text_offset": [0, 1, 2]}
            choices.append(
                {
                    "index": i,
                    "text": f"    return x + {index}  # choice {i}\n",
                    "finish_reason": "length",
                    "logprobs": lp if logprobs else None,
                }
            )
    return {
        "id": f"cmpl-{task}",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": 3 * len(choices), "total_tokens": 10 + 3 * len(choices)},
    }


def _config(server: FakeOpenAI, **overrides: Any) -> SamplerConfig:
    settings: dict[str, Any] = {
        "model": "gpt-4o",
        "backend": "openai",
        "api_base": server.base_url,
        "api_key_env": "BTP_TEST_OPENAI_KEY",
        "request_timeout_s": 0.5,
        "max_retries": 4,
        "max_concurrency": 4,
    }
    settings.update(overrides)
    return SamplerConfig(**settings)


def test_retries_on_429_500_timeout_and_malformed_lose_and_duplicate_nothing(monkeypatch, caplog):
    monkeypatch.setenv("BTP_TEST_OPENAI_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    problems = [_problem(i) for i in range(6)]
    faults = {"T/0": ["429", "500"], "T/1": ["timeout"], "T/2": ["malformed"], "T/3": ["500", "500", "500"]}
    with FakeOpenAI(faults) as server:
        sampler = build_sampler(_config(server))
        assert isinstance(sampler, OpenAISampler)
        results = sampler.generate(problems, GenerationParams(strategy="beam", num_candidates=3, max_new_tokens=64))
        usage = sampler.usage()
        sampler.close()
        auth_headers = list(server.auth_headers)
        requests_per_task = {task: len(bodies) for task, bodies in server.requests.items()}

    assert [cands[0].task_id for cands in results] == [p.task_id for p in problems]
    for problem, cands in zip(problems, results, strict=True):
        index = problem.task_id.split("/")[1]
        assert len(cands) == 3
        assert [c.rank for c in cands] == [0, 1, 2]
        assert {c.completion.split("# choice ")[1][0] for c in cands} == {"0", "1", "2"}  # no duplicates
        assert all(c.task_id == problem.task_id for c in cands)
        assert all(f"return x + {index}" in c.program for c in cands)
        assert cands[0].program.startswith(f"def func_{index}(x):")
        scores = [c.score for c in cands]
        assert scores == sorted(scores, reverse=True)
        expected_mean = (-0.1 - 0.2 - 0.05) / 3
        assert cands[0].possibility == pytest.approx(math.exp(expected_mean))
        assert cands[0].sampler.backend == "openai" and cands[0].sampler.model == "gpt-4o"
    assert requests_per_task == {"T/0": 3, "T/1": 2, "T/2": 2, "T/3": 4, "T/4": 1, "T/5": 1}
    assert usage["retries"] == 2 + 1 + 1 + 3
    assert usage["requests"] == sum(requests_per_task.values())
    # Six successful requests of 10 prompt + 9 completion tokens, priced as gpt-4o.
    assert usage["prompt_tokens"] == 60 and usage["completion_tokens"] == 54
    assert usage["cost_usd"] == pytest.approx((60 * 2.50 + 54 * 10.00) / 1e6)
    assert all(h == f"Bearer {SECRET}" for h in auth_headers)
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text
    assert SECRET not in repr(sampler) and SECRET not in repr(sampler.config)
    assert SECRET not in json.dumps(sampler.config.to_dict())
    assert SECRET not in json.dumps([c.to_dict() for cands in results for c in cands])


def test_unauthorized_and_unknown_model_fail_fast_without_retries(monkeypatch):
    monkeypatch.setenv("BTP_TEST_OPENAI_KEY", SECRET)
    for status in (401, 404):
        with FakeOpenAI(status=status) as server:
            sampler = build_sampler(_config(server, max_retries=5))
            started = time.monotonic()
            with pytest.raises(APIAuthError) as caught:
                sampler.generate([_problem(0)], GenerationParams(strategy="sample", num_candidates=2))
            elapsed = time.monotonic() - started
            sampler.close()
            assert elapsed < 1.0
            assert sum(len(v) for v in server.requests.values()) == 1
            assert SECRET not in str(caught.value)
            assert ("401" in str(caught.value)) == (status == 401)


def test_completions_endpoint_without_logprobs_marks_possibility_unknown():
    problems = [_problem(7), _problem(8)]
    with FakeOpenAI({"T/8": ["short"]}, logprobs=False) as server:
        # An OpenAI-compatible server (vLLM) needs no key.
        config = _config(server, model="my-local-model", api_key_env="BTP_TEST_UNSET_KEY", api_endpoint="completions")
        sampler = build_sampler(config)
        results = sampler.generate(problems, GenerationParams(strategy="sample", num_candidates=2, temperature=0.7))
        sampler.close()
        requests_for_8 = [body["n"] for body in server.requests["T/8"]]
    assert requests_for_8 == [2, 1]  # the short answer's missing choice was asked for again
    for problem, cands in zip(problems, results, strict=True):
        assert len(cands) == 2
        index = problem.task_id.split("/")[1]
        assert all(c.possibility is None and c.score is None and c.token_logprobs is None for c in cands)
        assert cands[0].program == problem.prompt + f"    return x + {index}  # choice 0\n"
        assert cands[0].finish_reason.value == "length"
        assert cands[0].sampler.model == "my-local-model"


def test_missing_key_for_a_hosted_api_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    from btp_ray.sampling import SamplerConfigError

    with pytest.raises(SamplerConfigError, match="DEEPSEEK_API_KEY"):
        build_sampler(SamplerConfig(model="deepseek-chat"))
