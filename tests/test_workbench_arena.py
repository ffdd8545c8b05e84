"""The workbench's arena over HTTP on a tiny model: both answers stream, a blind choice lands in the
run's feedback store in `domaintune feedback`'s format, hostile requests are refused, and a chat abandoned
mid-answer leaves the arena free for the next."""
import http.client
import json
import re
import time

import pytest
from conftest import free_port, live_server, make_trained_run
from fastapi.testclient import TestClient

from domaintune.evaluation.feedback import export_pairs, session_summary
from domaintune.evaluation.judge import read_feedback
from domaintune.workbench import arena as arena_module
from domaintune.workbench.app import create_app
from domaintune.workbench.arena import MAX_MESSAGE_CHARS, Arena


@pytest.fixture(scope="module")
def arena():
    return Arena(seed=3)  # one per module: the models load once for all its tests


@pytest.fixture
def web(tmp_path, tiny_model_dir, arena):
    runs = tmp_path / "runs"
    root = make_trained_run(runs, tiny_model_dir)
    client = TestClient(create_app(runs, arena=arena), base_url="http://127.0.0.1:7860", follow_redirects=False)
    token = re.search(r'name="csrf" content="([^"]+)"', client.get("/").text).group(1)
    return client, token, root


def events(text: str) -> list[tuple[str, dict]]:
    return [(kind, json.loads(data)) for kind, data in re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)]


def chat(client, token, name, message, blind=False, conversation=""):
    return client.post(f"/runs/{name}/arena/chat", headers={"X-CSRF-Token": token},
                       json={"message": message, "blind": blind, "conversation": conversation, "max_new_tokens": 8})


def answers_of(stream: list[tuple[str, dict]]) -> dict[str, str]:
    pieces: dict[str, str] = {}
    for kind, data in stream:
        if kind == "piece":
            pieces[data["column"]] = pieces.get(data["column"], "") + data["text"]
    finished = {data["column"]: data["text"] for kind, data in stream if kind == "answer"}
    assert {column: text.strip() for column, text in pieces.items()} == finished  # the pieces add up to the answer
    return finished


def test_the_stream_carries_both_answers_and_the_conversation_goes_on(web):
    client, token, root = web
    assert 'id="arena"' in client.get(f"/runs/{root.name}/arena").text
    response = chat(client, token, root.name, "Where is the office?")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    start = stream[0][1]
    assert stream[0][0] == "start" and start["columns"] == ["base", "tuned"] and not start["blind"]
    answers = answers_of(stream)
    assert set(answers) == {"base", "tuned"} and all(answers.values()) and answers["base"] != answers["tuned"]
    assert sum(kind == "piece" for kind, _ in stream) > 2 and stream[-1][0] == "end"
    assert not (root / "eval" / "feedback.db").exists()  # only blind mode records anything
    follow_up = events(chat(client, token, root.name, "And the other one?", conversation=start["conversation"]).text)
    assert follow_up[0][1]["conversation"] == start["conversation"] and set(answers_of(follow_up)) == {"base", "tuned"}


def test_a_blind_choice_lands_in_the_feedback_store_in_the_feedback_format(web):
    client, token, root = web
    stream = events(chat(client, token, root.name, "Which city?", blind=True).text)
    assert stream[0][1]["columns"] == ["A", "B"]
    answers = answers_of(stream)
    item = next(data["item"] for kind, data in stream if kind == "item")
    assert item == 3  # numbered after the three evaluated samples the store starts from
    chosen = client.post(f"/runs/{root.name}/arena/choose", data={"csrf": token, "item": item, "choice": 0})
    assert chosen.status_code == 200
    sources = chosen.json()["sources"]
    assert sorted(sources.values()) == ["base", "tuned"] and chosen.json()["choice"] == sources["A"]
    # The same files `domaintune feedback` writes: the judge's feedback.jsonl and the human win rate.
    assert read_feedback(root / "eval" / "feedback.jsonl") == {3: sources["A"]}
    summary = json.loads((root / "eval" / "feedback-summary.json").read_text())
    assert summary["items"] == 1 and summary["wins"][sources["A"]] == 1
    assert session_summary(root / "eval" / "feedback.db")["total"] == 4
    assert export_pairs(root / "eval" / "feedback.db", root / "pairs.jsonl")["pairs"] == 1  # preference data
    pairs = json.loads((root / "pairs.jsonl").read_text())
    assert pairs["chosen"] == answers["A"] and pairs["rejected"] == answers["B"]
    assert pairs["prompt"] == [{"role": "user", "content": "Which city?"}]


def test_hostile_requests_are_refused(web, tmp_path):
    client, token, root = web
    name = root.name
    no_token = client.post(f"/runs/{name}/arena/chat", json={"message": "hi"})
    assert no_token.status_code == 403
    wrong = client.post(f"/runs/{name}/arena/chat", json={"message": "hi"}, headers={"X-CSRF-Token": "guessed"})
    assert wrong.status_code == 403
    assert client.post(f"/runs/{name}/arena/choose", data={"item": 0, "choice": 0}).status_code == 403
    oversize = chat(client, token, name, "x" * (MAX_MESSAGE_CHARS + 1))
    assert oversize.status_code == 400 and "at most" in oversize.json()["detail"]
    body = client.post(f"/runs/{name}/arena/chat", headers={"X-CSRF-Token": token},
                       content=json.dumps({"message": "y" * 100_000}))
    assert body.status_code == 413
    assert chat(client, token, name, "   ").status_code == 400
    for tokens in (b"1e999", b'"many"'):  # JSON's 1e999 is a float: infinity
        response = client.post(f"/runs/{name}/arena/chat", headers={"X-CSRF-Token": token},
                               content=b'{"message": "hi", "max_new_tokens": ' + tokens + b"}")
        assert response.status_code == 400 and "max_new_tokens: a whole number" in response.json()["detail"], tokens
    for outside in ("..%2F..", "..%2Fruns", "%2Fetc", "uploads"):
        assert chat(client, token, outside, "hi").status_code == 404, outside
        assert client.get(f"/runs/{outside}/arena").status_code == 404, outside
    bad_item = client.post(f"/runs/{name}/arena/choose", data={"csrf": token, "item": 99, "choice": 0})
    assert bad_item.status_code == 400
    assert not (root / "eval" / "feedback.jsonl").exists()
    (root / "model" / "training.json").unlink()  # not trained: nothing to chat with
    assert "not trained yet" in chat(client, token, name, "hi").json()["detail"]


class SlowModel:
    """Stands in for a model (no torch): a piece every 20 ms up to the tokens asked; notes when its stream ends."""

    tokenizer = None

    def __init__(self):
        self.streams_ended = 0

    def stream(self, prompt, max_new_tokens):
        try:
            for index in range(max_new_tokens):
                time.sleep(0.02)
                yield f"w{index} "
        finally:
            self.streams_ended += 1


def test_a_chat_abandoned_mid_answer_frees_the_arena_for_the_next(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    root = runs / "slow-20260101-000000"
    (root / "model").mkdir(parents=True)
    (root / "recipe.yaml").write_text("name: slow\n", encoding="utf-8")
    (root / "model" / "training.json").write_text("{}", encoding="utf-8")
    model, arena = SlowModel(), Arena()
    monkeypatch.setattr(arena_module, "render", lambda tokenizer, messages, add_generation_prompt: "prompt")
    monkeypatch.setattr(arena, "generator", lambda run, side: model)
    port = free_port()
    with live_server(create_app(runs, arena=arena), port):
        page = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        page.request("GET", "/")
        token = re.search(r'name="csrf" content="([^"]+)"', page.getresponse().read().decode()).group(1)
        headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
        abandoned = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        abandoned.request("POST", f"/runs/{root.name}/arena/chat", json.dumps({"message": "hi", "max_new_tokens": 500}),
                          headers)
        answer = abandoned.getresponse()
        while not answer.readline().startswith(b"event: piece"):
            pass
        abandoned.close()  # mid-answer: the tab is closed
        deadline = time.monotonic() + 5
        while (arena.lock.locked() or not model.streams_ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not arena.lock.locked() and model.streams_ended == 1  # the abandoned answer stopped decoding
        page.request("POST", f"/runs/{root.name}/arena/chat", json.dumps({"message": "again", "max_new_tokens": 3}),
                     headers)
        following = page.getresponse().read().decode()
        assert answers_of(events(following)) == {"base": "w0 w1 w2", "tuned": "w0 w1 w2"}
