"""The fake OpenAI-compatible server used by the server tests and the throughput benchmark."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from unicorn_datasets.generation.base import GenerationRequest
from unicorn_datasets.recipe import CaptionsSection, InstructSection
from unicorn_datasets.stages import captions
from unicorn_datasets.stages import instruct as instructions
from unicorn_datasets.testing.fake_answers import answer
from unicorn_datasets.testing.fake_openai_server import FAULTS, FakeServerConfig, drain_time, inflight_summary, serve

SEEDS = ["A man riding a bicycle along a rain-soaked street lined with small shops.",
         "Two children building a sandcastle near the edge of the water on a sunny beach.",
         "A red vintage car parked in front of a bakery."]


def body_of(req: GenerationRequest, max_tokens: int = 512) -> dict[str, Any]:
    """The OpenAI body a client sends for one request (the chat or the completions route)."""
    body: dict[str, Any] = {"model": "fake-model", "max_tokens": max_tokens, "seed": req.seed}
    if req.messages is not None:
        body["messages"] = req.messages
    else:
        body["prompt"] = req.prompt
    if req.stop:
        body["stop"] = list(req.stop)
    if req.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "o", "schema": req.json_schema}}
    return body


def route(body: dict[str, Any]) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def text_of(data: dict[str, Any]) -> tuple[str, str]:
    choice = data["choices"][0]
    return (choice["message"]["content"] if "message" in choice else choice["text"]), choice["finish_reason"]


async def post_all(url: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[Any]:
    """Every body at once; each result is the decoded JSON, an int status or an exception name."""
    limits = httpx2.Limits(max_connections=len(bodies) + 1)
    async with httpx2.AsyncClient(timeout=timeout, limits=limits) as client:
        async def one(body: dict[str, Any]) -> Any:
            try:
                r = await client.post(url + route(body), json=body)
            except httpx2.HTTPError as e:
                return type(e).__name__
            if r.status_code != 200:
                return r.status_code
            try:
                return r.json()
            except ValueError:
                return "bad_body"

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def caption_bodies(n: int, mode: str = "chat", attempt: int = 0) -> list[dict[str, Any]]:
    cfg = CaptionsSection()
    return [body_of(captions.build_request(f"row{i}", f"{SEEDS[i % 3]} Number {i}.", cfg, 0, attempt, mode), 200)
            for i in range(n)]


@pytest.fixture(scope="module")
def instant() -> Iterator[Any]:
    with serve(latency_scale=0.0) as server:
        yield server


def test_many_requests_are_in_flight_at_once() -> None:
    with serve(median=1.0, p99=1.0) as server:
        results = asyncio.run(post_all(server.url, caption_bodies(64)))
        stats = server.stats(series=True)
    assert all(isinstance(r, dict) for r in results)
    assert stats["max_in_flight"] == 64  # the server held every request at once: none waited for another
    assert stats["served"] == {"chat": 64} and stats["in_flight"] == 0
    window = inflight_summary(stats["series"], stats["first_request"], stats["last_response"])
    assert window["samples"] > 0 and window["mean"] > 32
    assert stats["series"][-1][2] == 64  # the third field counts the requests received
    assert drain_time(stats["series"], 64, 8) is not None and drain_time(stats["series"], 65, 0) is None


def test_one_token_requests_are_counted_apart_from_the_work(instant: Any) -> None:
    """A build's health check asks for one token before any row: benches time the rows from the first real request."""
    instant.reset()
    ping = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    asyncio.run(post_all(instant.url, [ping]))
    assert instant.stats()["first_work_request"] is None
    asyncio.run(post_all(instant.url, caption_bodies(3)))
    stats = instant.stats()
    assert stats["one_token"] == 1 and stats["received"] == {"chat": 4}
    assert stats["first_work_request"] is not None and stats["first_work_request"] >= stats["first_request"]


def test_one_keep_alive_connection_serves_requests_one_after_another() -> None:
    async def sequential(url: str) -> list[int]:
        limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx2.AsyncClient(timeout=10, limits=limits) as client:
            return [(await client.post(url + route(b), json=b)).status_code for b in caption_bodies(20)]

    with serve(median=0.01, p99=0.02) as server:
        assert asyncio.run(sequential(server.url)) == [200] * 20
        assert server.stats()["served"] == {"chat": 20}


def test_answers_are_a_function_of_the_request_only(instant: Any) -> None:
    bodies = caption_bodies(6)
    first = asyncio.run(post_all(instant.url, bodies))
    again = asyncio.run(post_all(instant.url, list(reversed(bodies))))[::-1]
    assert [text_of(r) for r in first] == [text_of(r) for r in again]
    reseeded = asyncio.run(post_all(instant.url, caption_bodies(6, attempt=1)))
    assert all(text_of(a) != text_of(b) for a, b in zip(first, reseeded, strict=True))
    assert instant.stats()["duplicates"] >= 6


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_captions_pass_the_stage_check(instant: Any, mode: str) -> None:
    cfg = CaptionsSection(min_seed_overlap=1.0, min_words=60, max_words=120)
    seeds = [f"{SEEDS[i % 3]} Seen from angle {i}." for i in range(30)]
    reqs = [captions.build_request(f"r{i}", s, cfg, 7, 0, mode) for i, s in enumerate(seeds)]
    results = asyncio.run(post_all(instant.url, [body_of(r, 200) for r in reqs]))
    reasons = []
    for res, seed in zip(results, seeds, strict=True):
        text, finish = text_of(res)
        assert finish == "stop" and res["usage"]["completion_tokens"] > 60
        reasons.append(captions.check(captions.clean(text, finish), cfg, finish, seed))
    assert reasons == [None] * len(seeds)


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("constrained", [True, False])
def test_instruct_json_passes_validation(instant: Any, chat: bool, constrained: bool) -> None:
    cfg = InstructSection(constrained=constrained, max_chars=220,
                          items={"mc": (2, 3), "qa": (6, 8), "reasoning": (1, 2)})
    caption = answer(caption_bodies(1)[0], invalid=False).text
    rows = instructions.InstructRows(cfg, 0, chat)
    prefill = rows.prefill
    reqs = [rows.build_request({"id": f"r{i}", "caption": caption, "task": task}, i)
            for i in range(4) for task in instructions.TASKS]
    results = asyncio.run(post_all(instant.url, [body_of(r, 1024) for r in reqs]))
    tasks = [t for _ in range(4) for t in instructions.TASKS]
    for task, res in zip(tasks, results, strict=True):
        text, finish = text_of(res)
        v = instructions.validate(task, prefill + text, caption, cfg)
        assert v.reason is None, (task, text)
        lo, hi = cfg.bounds(task)
        assert lo <= len(v.items) <= hi


def test_invalid_share_is_deterministic_and_a_new_seed_can_pass() -> None:
    cfg = CaptionsSection()
    with serve(latency_scale=0.0, invalid=0.3) as server:
        first = asyncio.run(post_all(server.url, caption_bodies(200)))
        again = asyncio.run(post_all(server.url, caption_bodies(200)))
        retry = asyncio.run(post_all(server.url, caption_bodies(200, attempt=1)))
        stats = server.stats()
    bad = [captions.check(captions.clean(*text_of(r)), cfg, "stop") for r in first]
    assert 30 <= sum(b is not None for b in bad) <= 90 and set(bad) <= {None, "too_short"}
    assert [text_of(r) for r in first] == [text_of(r) for r in again]
    retried = [captions.check(captions.clean(*text_of(r)), cfg, "stop") for r, b in zip(retry, bad, strict=True) if b]
    assert retried.count(None) > len(retried) / 2
    retry_bad = sum(captions.check(captions.clean(*text_of(r)), cfg, "stop") is not None for r in retry)
    assert stats["invalid"] == 2 * sum(b is not None for b in bad) + retry_bad


def test_faults_appear_at_their_rates_and_resending_can_succeed() -> None:
    rates = {f: 0.1 for f in FAULTS}
    with serve(latency_scale=0.0, hang_seconds=60.0, **rates) as server:
        bodies = caption_bodies(500)
        results = asyncio.run(post_all(server.url, bodies, timeout=3.0))  # slack for a loaded box
        stats = server.stats()
        kinds = Counter(_kind(r) for r in results)
        failed = [b for b, r in zip(bodies, results, strict=True) if _kind(r) != "ok"]
        resent = asyncio.run(post_all(server.url, failed, timeout=3.0))
    for fault in FAULTS:
        assert 25 <= stats["failed"][fault] <= 80, (fault, stats["failed"])
    assert kinds["error_500"] == stats["failed"]["error_500"] and kinds["error_429"] == stats["failed"]["error_429"]
    assert kinds["hang"] == stats["failed"]["hang"]  # the client timeout fired: the server never answered
    assert kinds["reset"] == stats["failed"]["reset"] and kinds["bad_body"] == stats["failed"]["bad_body"]
    assert kinds["empty"] == stats["failed"]["empty"] and kinds["ok"] == stats["served"]["chat"]
    assert sum(_kind(r) == "ok" for r in resent) > len(failed) / 4  # the attempt counter changes the draw


def _kind(result: Any) -> str:
    if isinstance(result, dict):
        return "empty" if text_of(result)[0] == "" else "ok"
    return {500: "error_500", 503: "error_503", 429: "error_429", "ReadTimeout": "hang",
            "RemoteProtocolError": "reset", "ReadError": "reset", "bad_body": "bad_body"}.get(result, str(result))


def test_429_carries_retry_after_and_down_modes(instant: Any) -> None:
    with serve(latency_scale=0.0, error_429=1.0, retry_after=7.0) as server:
        r = httpx2.post(server.url + "/v1/chat/completions", json=caption_bodies(1)[0])
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
    instant.configure(down="503")
    try:
        assert asyncio.run(post_all(instant.url, caption_bodies(3))) == [503, 503, 503]
        instant.configure(down="refuse")
        assert all(isinstance(r, str) for r in asyncio.run(post_all(instant.url, caption_bodies(3))))
    finally:
        instant.configure(down="")
    assert all(isinstance(r, dict) for r in asyncio.run(post_all(instant.url, caption_bodies(3))))


def test_max_tokens_cuts_the_answer_with_finish_reason_length(instant: Any) -> None:
    body = caption_bodies(1)[0] | {"max_tokens": 20}
    data = asyncio.run(post_all(instant.url, [body]))[0]
    text, finish = text_of(data)
    assert finish == "length" and data["usage"]["completion_tokens"] == 20 and len(text.split()) <= 16


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="fault rates"):
        FakeServerConfig(error_500=0.6, reset=0.6)
    with pytest.raises(ValueError, match="median"):
        FakeServerConfig(median=3.0, p99=1.0)
