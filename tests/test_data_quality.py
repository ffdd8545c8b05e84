from domaintune.config import QualityConfig
from domaintune.data.quality import boilerplate_ratio, quality_filter, repetition_ratio, symbol_ratio


def chat(user: str, answer: str, line: int = 1) -> dict:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "label": None, "source": {"file": "f", "line": line}}


NORMAL = [
    chat("SILICON VALLEY BANK, a California corporation, with its principal place of business at Santa Clara.",
         "[SILICON VALLEY BANK - ORGANIZATION, Santa Clara - LOCATION]"),
    chat("Section 2.3(b)(i): 1,000,000 USD.", "No entities found"),
    chat("The Borrower shall pay interest on the unpaid principal amount of each Loan at the rate per annum "
         "equal to the LIBOR Rate plus the Applicable Margin, payable monthly in arrears.", "No entities found"),
]


def test_measures():
    assert repetition_ratio("a b c a b c a b c") == 1 - 3 / 7
    assert repetition_ratio("one two three four") == 0.0
    assert symbol_ratio("a!b?") == 0.5
    assert symbol_ratio("By: Paul ----------") == 2 / 8  # a rule line counts as one symbol
    assert boilerplate_ratio("Real content here.\nAll rights reserved.") == 0.5


def test_filters_remove_what_they_should_and_say_why():
    bad = [
        chat("Tell me", "buy now cheap pills " * 10, line=2),
        chat("###", "$$$ %%% @@@ !!! ### *** ^^^ &&& ok", line=3),
        chat("Page footer", "Home\nMenu\nAccept all cookies\nAll rights reserved © 2024\nInterest is 5%.", line=4),
        chat("Was sagt der Vertrag?", "Der Kreditnehmer zahlt die Zinsen monatlich im Voraus an die Bank.", line=5),
    ]
    kept, removed = quality_filter(NORMAL + bad, QualityConfig(languages=["en"]))
    assert kept == NORMAL
    assert [(item.row["source"]["line"], item.kind) for item in removed] == [
        (2, "repetitive"),
        (3, "symbols"),
        (4, "boilerplate"),
        (5, "language"),
    ]
    assert removed[0].reason.startswith("repetitive: ") and "> 50%" in removed[0].reason


def test_filters_can_be_turned_off():
    repetitive = [chat("Tell me", "buy now cheap pills " * 10)]
    assert quality_filter(repetitive, QualityConfig(max_repetition=None))[0] == repetitive
    assert quality_filter(repetitive, QualityConfig(enabled=False))[0] == repetitive
