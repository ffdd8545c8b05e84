from transformers import AutoTokenizer

from domaintune.core.chat import IGNORE_INDEX, count_tokens, encode_row, prompt_text


def supervised_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX])


def test_loss_covers_assistant_tokens_only(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Second question"},
            {"role": "assistant", "content": "Second answer"},
        ]
    }
    encoded = encode_row(tokenizer, row, max_length=256)
    supervised = supervised_text(tokenizer, encoded)
    assert "First answer" in supervised and "Second answer" in supervised
    for hidden in ("Be brief", "question", "system", "user", "assistant"):
        assert hidden not in supervised
    # The end-of-turn token is supervised so the model learns to stop.
    assert supervised.count(tokenizer.eos_token) == 2
    # Labels equal the inputs where supervised (the model shifts them itself).
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(encoded["input_ids"], encoded["labels"]))
    assert len(encoded["input_ids"]) == count_tokens(tokenizer, row)


def test_prompt_is_the_conversation_up_to_the_answer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    prompt = prompt_text(tokenizer, messages)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "A." not in prompt


def test_raw_text_supervises_every_token_and_ends_with_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = encode_row(tokenizer, {"text": "Collateral means all assets."}, max_length=64)
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
