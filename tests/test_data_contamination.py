import io
import json

import pytest
from rich.console import Console

from domaintune.config import ContaminationConfig, DataConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.contamination import check_contamination
from domaintune.data.prepare import prepare_dataset


def chat(user: str, answer: str, line: int = 1) -> dict:
    messages = [{"role": "system", "content": "same for all rows"}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}]
    return {"messages": messages, "label": None, "source": {"file": "f", "line": line}}


TEST_ROW = chat("The Lender may assign its rights under this Agreement to any affiliate without consent.", "No entities found")


def test_a_test_row_planted_in_train_is_detected():
    train = [
        chat("Preamble. " + TEST_ROW["messages"][1]["content"] + " Further text follows here.", "No entities found", 1),
        chat("Interest accrues daily on the basis of a 360-day year.", "No entities found", 2),
    ]
    other = chat("The Agent shall notify the Borrower of each Eurodollar Rate determination promptly.", "No entities found", 9)
    report = check_contamination(train, {"test": [TEST_ROW, other]}, ContaminationConfig())
    assert report["test"]["rows"] == 2 and report["test"]["contaminated"] == 1
    assert report["test"]["examples"][0]["overlap"] >= 0.5 and report["test"]["examples"][0]["line"] == 1


def test_short_rows_match_only_whole():
    train = [chat("Fees are due monthly.", "ok")]
    report = check_contamination(train, {"test": [chat("Fees are due monthly.", "ok"), chat("Fees are due.", "no")]},
                                 ContaminationConfig())
    assert report["test"]["contaminated"] == 1


def test_benchmark_file_copied_into_train_warns_or_fails(tmp_path):
    rows = [{"prompt": f"Question number {i} about clause {i} of the facility agreement dated today?", "completion": f"Answer {i}."}
            for i in range(30)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    benchmark = tmp_path / "bench.jsonl"
    benchmark.write_text(json.dumps(rows[3]) + "\n" + json.dumps({"prompt": "Unrelated words entirely new", "completion": "x"}) + "\n")
    config = {"train": [str(train)], "split": {"validation": 0.0, "test": 0.0},
              "contamination": {"benchmarks": [str(benchmark)]}}
    out = io.StringIO()
    card = prepare_dataset(DataConfig(**config), tmp_path / "out", seed=0, console=Console(file=out, width=200))
    assert card["contamination"][str(benchmark)]["contaminated"] == 1
    assert "warning: evaluation rows overlap train" in out.getvalue()
    config["contamination"]["action"] = "fail"
    with pytest.raises(DomaintuneError, match=r"evaluation data overlaps the train split: .*bench\.jsonl 1/2"):
        prepare_dataset(DataConfig(**config), tmp_path / "out", seed=0, console=Console(file=io.StringIO()))


def instructed(text: str, answer: str, line: int) -> dict:
    instruction = ("Do the following two product descriptions refer to the same real-world product? Answer with 'Yes' "
                   "if they do and 'No' if they do not.")
    return {"messages": [{"role": "user", "content": f"{instruction}\n\n{text}"}, {"role": "assistant", "content": answer}],
            "label": None, "source": {"file": "pairs.json", "line": line}}


def test_the_instruction_every_row_repeats_is_not_contamination_but_a_near_copy_with_another_answer_is():
    titles = ["Samsung 970 EVO Plus NVMe M.2 SSD 500 GB", "Logitech H390 Stereo USB Computer Headset",
              "Intel Core i7-9700F 3.0 GHz eight core processor", "Corsair Vengeance LPX 8GB DDR4 2666MHz memory",
              "Zebra 800033-801 black monochrome ribbon 1000 prints"]
    train = [instructed(f"Product 1: {title}\nProduct 2: {title} boxed retail", "Yes", line)
             for line, title in enumerate(titles, 1)]
    unseen = instructed("Product 1: Dymo D1 label tape 24 mm black on yellow\nProduct 2: Tissot T-Touch Expert Solar watch",
                        "No", 20)
    # The first product paired with the second's title: nearly the same words as a training row, another answer.
    repaired = instructed(f"Product 1: {titles[0]}\nProduct 2: {titles[0]} boxed retail", "No", 21)
    report = check_contamination(train, {"test": [unseen, repaired]}, ContaminationConfig())["test"]
    assert report["contaminated"] == 1 and report["other_answer"] == 1
    assert report["examples"][0]["line"] == 21
    assert (report["examples"][0]["answer"], report["examples"][0]["train_answer"]) == ("No", "Yes")
