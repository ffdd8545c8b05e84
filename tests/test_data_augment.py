import random

import pytest

from domaintune.config import AugmentConfig
from domaintune.data.augment import augment_rows, word_dropout, word_swap


def chat(user: str, answer: str, line: int) -> dict:
    messages = [{"role": "system", "content": "List the entities."}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}]
    return {"messages": messages, "label": None, "source": {"file": "f", "line": line}}


ROWS = [
    chat(f"The loan number {i} from Acme Bank to Globex Corp is due in Boston next year.",
         "[Acme Bank - ORGANIZATION, Globex Corp - ORGANIZATION, Boston - LOCATION]", i)
    for i in range(20)
]


def test_rules_never_touch_answer_words():
    protected = {"acme", "bank", "globex", "corp", "boston"}
    prompt = ROWS[0]["messages"][1]["content"]
    for seed in range(20):
        dropped = word_dropout(prompt, protected, random.Random(seed), 0.5)
        assert all(word in dropped.split() for word in ("Acme", "Bank", "Globex", "Corp", "Boston"))
        swapped = word_swap(prompt, protected, random.Random(seed))
        assert sorted(swapped.split()) == sorted(prompt.split()) and "Acme Bank to Globex Corp" in swapped


def test_train_split_gets_marked_rows_within_the_cap():
    config = AugmentConfig(methods=["word_dropout", "word_swap", "template"], max_share=0.5, word_dropout=0.3)
    added, counts = augment_rows(ROWS, config, seed=0)
    assert 0 < len(added) <= 10 and sum(counts.values()) == len(added)
    assert {row["source"]["augmented"] for row in added} <= {"word_dropout", "word_swap", "template"}
    for row in added:
        original = ROWS[row["source"]["line"]]
        assert row["messages"][-1] == original["messages"][-1] and row["messages"][0] == original["messages"][0]
        assert row["messages"][1]["content"] != original["messages"][1]["content"]
    assert augment_rows(ROWS, config, seed=0) == (added, counts)
    assert augment_rows(ROWS, AugmentConfig(), seed=0) == ([], {})


def test_paraphrases_that_lose_an_answer_word_are_discarded():
    def paraphraser():
        def generate(conversations):
            assert all("Rewrite the following text" in c[0]["content"] for c in conversations)
            # the first keeps every entity, the second drops "Boston"
            return ["Acme Bank lent Globex Corp money, repayable in Boston next year."] + [
                "A bank lent a company money." for _ in conversations[1:]
            ]

        return generate

    added, counts = augment_rows(ROWS, AugmentConfig(methods=["paraphrase"], max_share=0.1), seed=1, paraphraser=paraphraser)
    assert counts == {"paraphrase": 1}
    assert added[0]["messages"][1]["content"].startswith("Acme Bank lent") and added[0]["source"]["augmented"] == "paraphrase"


@pytest.mark.slow
def test_bundled_model_paraphrases_within_the_cap():
    from domaintune.config import validate_recipe
    from domaintune.data.text_generator import load_generator

    recipe = validate_recipe({"training": {"threads": 1}})  # the bundled smollm2-135m-instruct
    config = AugmentConfig(methods=["paraphrase"], max_share=0.2)
    added, counts = augment_rows(ROWS, config, seed=0, paraphraser=lambda: load_generator(recipe, None, 48, 4))
    assert counts["paraphrase"] == len(added) <= 4
    for row in added:  # whatever the model wrote, the entities of the answer are still in the prompt
        assert all(name in row["messages"][1]["content"].lower() for name in ("acme", "globex", "boston"))


def test_tool_rows_are_not_rewritten():
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "rate", "arguments": '{"loan": "A-7"}'}}]}
    tool_rows = [{"messages": [{"role": "user", "content": f"What is the rate of loan {i} at Acme Bank?"}, call,
                               {"role": "tool", "tool_call_id": "c1", "content": '{"rate": 5}'},
                               {"role": "assistant", "content": "5 percent."}],
                  "label": None, "source": {"file": "f", "line": 100 + i}} for i in range(10)]
    config = AugmentConfig(methods=["word_dropout", "word_swap", "template"], max_share=1.0, word_dropout=0.3)
    added, _ = augment_rows(tool_rows + ROWS, config, seed=0)
    assert added and all(row["source"]["line"] < 100 for row in added)  # only the plain chats were rewritten
