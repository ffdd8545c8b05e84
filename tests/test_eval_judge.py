"""The pairwise judge with scripted stubs: consistent picks, position bias cancelled, human agreement."""
import re

import pytest

from domaintune.config.inference import InferenceConfig
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.judge import judge_pairs, local_judge, parse_choice, read_feedback, summarise

SAMPLES = [
    {"prompt": f"Where is office {i}?", "reference": f"[City{i} - LOCATION]",
     "base": "I don't know", "tuned": f"[City{i} - LOCATION]"}
    for i in range(4)
]
SAMPLES.append({"prompt": "Which?", "reference": "[X - ORG]", "base": "[X - ORG]", "tuned": "no idea"})


def reference_matcher(prompts):
    """Prefers whichever answer equals the reference, wherever it stands."""
    replies = []
    for prompt in prompts:
        reference = re.search(r"Reference answer:\n(.*)\n", prompt).group(1)
        a = re.search(r"Answer A:\n(.*)\n", prompt).group(1)
        replies.append("A" if a == reference else "B is better.")
    return replies


def test_a_consistent_judge_picks_the_same_answer_in_both_orders():
    verdicts = judge_pairs(reference_matcher, SAMPLES, "Be strict.")
    assert [v["winner"] for v in verdicts] == ["tuned"] * 4 + ["base"]
    assert all(v["consistent"] for v in verdicts)
    summary = summarise(verdicts)
    assert summary["wins"] == {"tuned": 4, "base": 1, "tie": 0}
    assert summary["tuned_win_rate"] == 0.8 and summary["consistency"] == 1.0


def test_a_position_biased_judge_is_cancelled_by_swapping():
    verdicts = judge_pairs(lambda prompts: ["A"] * len(prompts), SAMPLES, "Be strict.")
    # "A" is base in one order and tuned in the other: no win survives.
    assert {v["winner"] for v in verdicts} == {"tie"}
    assert summarise(verdicts)["consistency"] == 0.0


def test_prompts_carry_the_rubric_and_both_orders():
    seen = []
    judge_pairs(lambda prompts: seen.extend(prompts) or ["tie"] * len(prompts), SAMPLES[:1], "RUBRIC-X")
    assert len(seen) == 2 and all(p.startswith("RUBRIC-X") for p in seen)
    assert "Answer A:\nI don't know\n" in seen[0] and "Answer B:\nI don't know\n" in seen[1]


def test_parse_choice():
    assert parse_choice("B") == "B" and parse_choice(" a.") == "A" and parse_choice("Tie") == "tie"
    assert parse_choice("Both are fine") is None and parse_choice("Answer B is better than A") == "B"


def test_agreement_with_human_choices(tmp_path):
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text('{"index": 0, "choice": "tuned"}\n{"index": 4, "choice": "tuned"}\n')
    summary = summarise(judge_pairs(reference_matcher, SAMPLES, "r"), read_feedback(feedback))
    assert summary["human_agreement"] == {"items": 2, "agreement": 0.5}
    feedback.write_text("not json\n")
    with pytest.raises(DomaintuneError, match="feedback.jsonl line 1"):
        read_feedback(feedback)


def test_a_loadable_model_can_judge(tiny_model_dir):
    ask = local_judge(str(tiny_model_dir), max_new_tokens=3, batch_size=2, bf16=False, inference=InferenceConfig())
    verdicts = judge_pairs(ask, SAMPLES[:2], "r")
    assert len(verdicts) == 2 and all(v["winner"] in {"base", "tuned", "tie"} for v in verdicts)


def test_an_openai_compatible_endpoint_can_judge(monkeypatch):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from domaintune.evaluation.judge import endpoint_api_key, endpoint_judge

    authorizations = set()

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self):
            authorizations.add(self.headers["Authorization"])
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path.endswith("/chat/completions") and request["model"] == "stub-judge"
            [reply] = reference_matcher([request["messages"][-1]["content"]])
            body = json.dumps({"id": "1", "object": "chat.completion", "created": 0, "model": "stub-judge",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_KEY", "sk-local")
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        key, note = endpoint_api_key(url, "JUDGE_KEY", [])
        assert key == "sk-local" and "sent" in note  # this machine's own endpoint gets the key
        ask = endpoint_judge(url, "stub-judge", key, 4)
        assert [v["winner"] for v in judge_pairs(ask, SAMPLES, "r")] == ["tuned"] * 4 + ["base"]
        assert authorizations == {"Bearer sk-local"}
    finally:
        server.shutdown()


def test_a_key_goes_to_another_host_only_when_the_recipe_allows_that_host(monkeypatch):
    from domaintune.evaluation.judge import endpoint_api_key

    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    key, note = endpoint_api_key("https://judge.attacker.example/v1", "GITHUB_TOKEN", [])
    assert key is None
    assert "GITHUB_TOKEN" in note and "judge.attacker.example" in note and "allowed_hosts" in note
    assert endpoint_api_key("https://api.openai.com/v1", "GITHUB_TOKEN", ["judge.attacker.example"])[0] is None
    assert endpoint_api_key("https://Judge.Attacker.example:8443/v1", "GITHUB_TOKEN", ["judge.attacker.example"])[0] == "ghp_secret"
    for local in ("http://localhost:8000/v1", "http://[::1]:8000/v1", "http://127.0.0.2/v1"):
        assert endpoint_api_key(local, "GITHUB_TOKEN", [])[0] == "ghp_secret"
    monkeypatch.delenv("GITHUB_TOKEN")
    key, note = endpoint_api_key("http://localhost:8000/v1", "GITHUB_TOKEN", [])
    assert key is None and "not set" in note


def test_the_judge_section_needs_exactly_one_judge():
    from domaintune.config import validate_recipe

    for judge in ({}, {"model": "a", "endpoint": "http://x/v1"}):
        with pytest.raises(DomaintuneError, match="evaluation.judge: .*exactly one of model and endpoint"):
            validate_recipe({"evaluation": {"judge": judge}})


@pytest.mark.parametrize("reply, choice", [
    ("As a judge, I pick B.", "B"),  # the article "a" is not answer A
    ("It is a tie.", "tie"),
    ("Neither is a clear winner: tie", "tie"),
    ("A better answer would name the type; B does.", "B"),  # a sentence's article "A" is not answer A
    ("B\n\nAnswer A misses the entity type.", "B"),  # a verdict on its own line
    ("Answer A misses the entity type.\n**Verdict:** B", "B"),
    ("Answer A is better than answer B.", "A"),
    ("Answer A misses the type, so the better one is B.", "B"),
    ("A. Answer B lists no entities.", "A"),  # a verdict at the start
    ("Answer A lists no entities, so: B", "B"),  # and at the end
    ("'B'", "B"),
])
def test_a_reply_names_its_verdict_wherever_it_stands(reply, choice):
    assert parse_choice(reply) == choice


@pytest.mark.parametrize("reply", ["Both are fine", "A or B, hard to say.", "A\nB",
                                   "Reply with exactly one of: A, B, tie.", "I prefer A, but B is better."])
def test_a_reply_without_one_clear_verdict_is_unparsed(reply):
    assert parse_choice(reply) is None


def test_unparsed_replies_count_as_ties_are_reported_and_never_consistent():
    replies = iter(["A", "B", "Both are fine", "no idea either"])  # sample 0: base in both orders; 1: unparsed
    verdicts = judge_pairs(lambda prompts: [next(replies) for _ in prompts], SAMPLES[:2], "r")
    assert [v["winner"] for v in verdicts] == ["base", "tie"]
    assert [v["consistent"] for v in verdicts] == [True, False]
    summary = summarise(verdicts)
    assert summary["unparsed"] == 2 and summary["consistency"] == 0.5
