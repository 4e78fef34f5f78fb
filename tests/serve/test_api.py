"""`gpt25 serve`'s API against a live server on 127.0.0.1, through the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import live_server, loader, post, wait_until_idle

from gpt25.chat import chat, trim_history
from gpt25.checkpoint import load_for_inference
from gpt25.cli import main
from gpt25.sample import generate
from gpt25.serve.api import Limits, Mailbox
from gpt25.tokenizer.chat_format import render_prompt

PROMPTS = ["Hello", "The cat sat on the", "x", "Once upon a time, there", "1, 2, 3,", "zz", "A longer prompt, yes.", "?"]


def alone(files, prompt: str, max_tokens: int) -> str:
    """What `gpt25 generate --temperature 0` prints after the prompt."""
    model, tokenizer, _ = load_for_inference(*files)
    return generate(model, tokenizer, prompt, max_new_tokens=max_tokens, temperature=0)[0]


def client(url: str, api_key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def chat_server(chat_model):
    with live_server(loader(chat_model)) as running:
        yield running


@pytest.fixture(scope="module")
def base_server(base_model):
    with live_server(loader(base_model), Limits(max_tokens=40, max_prompt_tokens=250, max_body_bytes=5000)) as running:
        yield running


def test_completions_whole_and_streamed_match_generate(base_server, base_model) -> None:
    url, _ = base_server
    expected = alone(base_model, "Hello", 12)
    whole = client(url).completions.create(model="m", prompt="Hello", max_tokens=12, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage.prompt_tokens == 5 and whole.usage.completion_tokens <= 12
    assert whole.usage.total_tokens == 5 + whole.usage.completion_tokens
    chunks = list(client(url).completions.create(model="m", prompt="Hello", max_tokens=12, temperature=0, stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(chunks) > 2  # streamed in pieces


def test_chat_whole_and_streamed(chat_server, chat_model) -> None:
    url, app = chat_server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    whole = client(url).chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0)
    model, tokenizer, _ = load_for_inference(*chat_model)
    prompt_ids = render_prompt(tokenizer, messages)
    assert whole.usage.prompt_tokens == len(prompt_ids)
    assert whole.choices[0].message.role == "assistant"
    stream = client(url).chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole.choices[0].message.content
    assert [chunk.choices[0].delta.role for chunk in chunks] == ["assistant"] + [None] * (len(chunks) - 1)
    assert len(chunks) > 2
    models = client(url).models.list()
    assert [entry.id for entry in models.data] == [app.state.served.model_name]


def test_stream_ends_with_done(base_server) -> None:
    url, _ = base_server
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "ab", "max_tokens": 3, "stream": True}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["usage"]["completion_tokens"] <= 3 and last["choices"][0]["finish_reason"] in ("length", "stop")


def test_eight_clients_at_once_each_get_what_they_would_alone(base_model) -> None:
    expected = [alone(base_model, prompt, 16) for prompt in PROMPTS]
    with live_server(loader(base_model, max_batch=8, step_delay=0.002)) as (url, app):
        def ask(index: int) -> str:
            if index % 2:
                stream = client(url).completions.create(model="m", prompt=PROMPTS[index], max_tokens=16,
                                                        temperature=0, stream=True)
                return "".join(chunk.choices[0].text for chunk in stream)
            return client(url).completions.create(model="m", prompt=PROMPTS[index], max_tokens=16,
                                                  temperature=0).choices[0].text

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert answers == expected
        assert wait_until_idle(app) == (0, 0)


def test_seeded_sampling_matches_generate(base_server, base_model) -> None:
    url, _ = base_server
    model, tokenizer, _ = load_for_inference(*base_model)
    expected = generate(model, tokenizer, "Hi", max_new_tokens=12, temperature=0.9, top_p=0.8, seed=7)[0]
    reply = client(url).completions.create(model="m", prompt="Hi", max_tokens=12, temperature=0.9, top_p=0.8, seed=7)
    assert reply.choices[0].text == expected


def test_stop_strings_cut_the_reply(base_server, base_model) -> None:
    url, _ = base_server
    full = alone(base_model, "Hello", 20)
    stop = full[5:7]
    reply = client(url).completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_a_closed_stream_frees_its_row_and_the_others_go_on(base_model) -> None:
    with live_server(loader(base_model, step_delay=0.05), Limits(max_tokens=100)) as (url, app):
        expected = alone(base_model, "Hello", 30)
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(lambda: client(url).completions.create(model="m", prompt="Hello", max_tokens=30,
                                                                       temperature=0).choices[0].text)
            body = {"prompt": "abc", "max_tokens": 100, "stream": True, "temperature": 0}  # greedy: no early end
            with httpx.stream("POST", url + "/v1/completions", json=body) as reply:
                next(reply.iter_lines())  # the first piece arrived; the client then goes away
            assert other.result() == expected
        assert wait_until_idle(app, timeout=1.5) == (0, 0)  # long before the stream's 100 steps of 50 ms


def test_a_whole_replys_tokens_wake_nothing_its_done_event_wakes_it() -> None:
    """A whole reply's coroutine waits on `post_done`: the engine thread's tokens leave nothing to take."""
    async def take_while_the_engine_posts() -> list[tuple[str, str]]:
        events = Mailbox(asyncio.get_running_loop())
        taking = asyncio.ensure_future(events.take())
        await asyncio.sleep(0)  # take() now waits for a post

        def engine_thread() -> None:
            for piece in ("a", "b", "c"):
                events.post_done("text", piece)
            events.post_done("done", "length")

        thread = threading.Thread(target=engine_thread)
        thread.start()
        taken = await taking
        thread.join()
        return taken

    assert asyncio.run(take_while_the_engine_posts()) == [("done", "length")]


def test_a_disconnect_while_waiting_for_a_whole_reply_frees_its_row(base_model) -> None:
    with live_server(loader(base_model, step_delay=0.05), Limits(max_tokens=100)) as (url, app):
        body = json.dumps({"prompt": "abc", "max_tokens": 100, "temperature": 0}).encode()  # greedy: no early end
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            started = threading.Event()
            while app.state.served.engine.load() != (1, 0) and not started.wait(0.01):
                pass
        assert wait_until_idle(app, timeout=1.5) == (0, 0)  # freed long before its 100 steps of 50 ms


def error_of(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a", "temperature": 3}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "top_k": 0}, "top_k"),
        ({"prompt": "a", "n": 2}, "n"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 41}, "max_tokens"),  # over the server's cap of 40
        ({"prompt": "a" * 251}, "prompt"),  # over the 250 prompt tokens allowed
        ({"prompt": "a" * 230, "max_tokens": 40}, "max_tokens"),  # past the context of 256
        ({"prompt": "a", "stop": ["", "b"]}, "stop"),
        ({"prompt": "a", "stream": "yes"}, "stream"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_bad_fields_are_400(base_server, body: dict, param: str) -> None:
    url, _ = base_server
    assert error_of(post(url, "/v1/completions", body), 400)["param"] == param


def test_a_prompt_that_fills_the_context_is_400_whatever_max_prompt_tokens_allows(base_model) -> None:
    """With --max_prompt_tokens at or above the context, a full-context prompt left no token to generate: a 500."""
    with live_server(loader(base_model), Limits(max_prompt_tokens=1000)) as (url, _):
        error = error_of(post(url, "/v1/completions", {"prompt": "a" * 256}), 400)
        assert error["param"] == "prompt" and error["code"] == "context_length_exceeded"
        assert "more than the 255 allowed" in error["message"]


def test_bad_json_bad_messages_and_chat_on_a_base_model_are_400(base_server, chat_server) -> None:
    assert "JSON" in error_of(post(base_server[0], "/v1/completions", b"{nope"), 400)["message"]
    assert error_of(post(base_server[0], "/v1/chat/completions", {"messages": []}), 400)["code"] == "model_not_chat"
    bad_role = {"messages": [{"role": "robot", "content": "hi"}]}
    assert "unknown role" in error_of(post(chat_server[0], "/v1/chat/completions", bad_role), 400)["message"]
    with pytest.raises(openai.BadRequestError, match="completions only"):
        client(base_server[0]).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_a_body_over_the_cap_is_413(base_server) -> None:
    reply = post(base_server[0], "/v1/completions", {"prompt": "a" * 6000})
    assert error_of(reply, 413)["code"] == "body_too_large"


def test_the_api_key_is_required_on_every_api_route(base_model) -> None:
    with live_server(loader(base_model), Limits(api_key="sesame")) as (url, _):
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").completions.create(model="m", prompt="a", max_tokens=2)
        for path in ("/v1/completions", "/v1/chat/completions"):
            error_of(post(url, path, {"prompt": "a"}), 401)
        error_of(httpx.get(url + "/v1/models"), 401)
        # Greedy: a sampled first token may be the end of text (an empty reply, once in a few hundred runs).
        reply = client(url, "sesame").completions.create(model="m", prompt="a", max_tokens=2, temperature=0)
        assert reply.usage.completion_tokens == 2 and reply.choices[0].finish_reason == "length"
        assert httpx.get(url + "/").status_code == 200  # the page itself asks for the key


def test_a_full_queue_is_429_with_retry_after(base_model) -> None:
    """One row and no queue: while a (slowed) reply streams, a second request is refused."""
    with live_server(loader(base_model, max_batch=1, max_queue=0, step_delay=0.05)) as (url, _):
        body = {"prompt": "a", "max_tokens": 200, "stream": True, "temperature": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the stream, and the reply is cancelled
            next(lines)
            reply = post(url, "/v1/completions", {"prompt": "a", "max_tokens": 2})
            assert "1 rows are busy and 0 requests wait" in error_of(reply, 429)["message"]
            assert reply.headers["retry-after"] == "1"


def test_still_loading_is_503_and_health_says_so(base_model) -> None:
    loaded = threading.Event()
    load = loader(base_model)
    with live_server(lambda: loaded.wait(30) and load(), wait_ready=False) as (url, app):
        assert httpx.get(url + "/health").json() == {"status": "loading"}
        reply = post(url, "/v1/completions", {"prompt": "a"})
        error_of(reply, 503)
        assert reply.headers["retry-after"]
        loaded.set()
        while app.state.served is None:
            loaded.wait(0.01)
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_unknown_routes_answer_in_openai_error_json(base_server) -> None:
    error_of(httpx.get(base_server[0] + "/v1/nothing"), 404)


def test_the_page_is_served_from_the_package(base_server) -> None:
    page = httpx.get(base_server[0] + "/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="stop"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN


def test_the_command_refuses_a_missing_checkpoint_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", "no/such/run", "--tokenizer", "no/such/tok"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("pass a run dir, a step dir or a .safetensors file")


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_the_command_refuses_a_port_outside_1_to_65535_in_one_line(chat_model, port: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", str(chat_model[0]), "--tokenizer", str(chat_model[1]), "--port", port])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"gpt25 serve: error: --port must be in 1-65535, got {port}"]


def test_fit_context_keeps_the_newest_turns_and_caps_the_reply_others_get_a_clear_error(small_chat_model) -> None:
    """The chat page's `"fit_context": true`: the turns `gpt25 chat` would keep, the reply capped at what fits
    (both reported in headers); an OpenAI client sending the same over-long request gets context_length_exceeded."""
    turns = [{"role": ("user", "assistant")[index % 2], "content": f"message {index} " * 4} for index in range(9)]
    model, tokenizer, _ = load_for_inference(*small_chat_model)
    kept, dropped = trim_history(tokenizer, turns, 128, 64)  # 64: the reply's share, half the context
    prompt_len = len(render_prompt(tokenizer, kept))
    cap = min(100, 128 - prompt_len)
    with live_server(loader(small_chat_model)) as (url, _):
        body = {"messages": turns, "max_tokens": 100, "temperature": 0}
        assert error_of(post(url, "/v1/chat/completions", body), 400)["code"] == "context_length_exceeded"
        reply = post(url, "/v1/chat/completions", body | {"fit_context": True})
        assert reply.status_code == 200, reply.text
        assert (reply.headers["x-gpt25-dropped-messages"], reply.headers["x-gpt25-max-tokens"]) == (str(dropped), str(cap))
        assert dropped == 8 and kept == turns[-1:] and (prompt_len, cap) == (46, 82)  # 128 - 46 < the 100 asked
        assert reply.json()["usage"]["prompt_tokens"] == prompt_len
        assert reply.json()["choices"][0]["message"]["content"] == chat(model, tokenizer, kept, temperature=0,
                                                                          max_new_tokens=cap)
        too_long = {"messages": [{"role": "user", "content": "x" * 120}], "fit_context": True}
        error = error_of(post(url, "/v1/chat/completions", too_long), 400)
        assert error["code"] == "context_length_exceeded" and "shorten the prompt" in error["message"]
        assert error_of(post(url, "/v1/chat/completions", body | {"fit_context": "yes"}), 400)["param"] == "fit_context"
