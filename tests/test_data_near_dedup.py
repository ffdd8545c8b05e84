from domaintune.config import NearDedupConfig
from domaintune.data.near_dedup import near_dedup_rows

BASE = (
    "The Borrower shall repay the outstanding principal amount of the Term Loan in quarterly instalments, each "
    "equal to the amount set out opposite the relevant date in the repayment schedule, together with all accrued "
    "and unpaid interest, fees and other amounts then due under the Loan Documents, by transfer of immediately "
    "available funds to the account of the Administrative Agent"
)


def qa(line: int, prompt: str, answer: str = "No entities found") -> dict:
    messages = [
        {"role": "system", "content": "Shared system prompt that every row repeats word for word."},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, "label": None, "source": {"file": "f.jsonl", "line": line}}


def test_known_near_duplicate_pairs_are_found_and_distinct_rows_kept():
    rows = [
        qa(1, BASE + " starting on March 31, 2024, as set out in Schedule 2."),
        qa(2, BASE.upper() + " starting on March 31 2024 as set out in Schedule 2"),  # case and punctuation only
        qa(3, BASE.replace("quarterly", "monthly") + " starting on March 31, 2024, as set out in Schedule 2."),  # one word
        qa(4, "The Agent may resign at any time by giving notice to the Lenders and the Borrower."),
        qa(5, "SILICON VALLEY BANK is the Lender.", "[SILICON VALLEY BANK - ORGANIZATION]"),
        qa(6, "WELLS FARGO BANK is the Lender.", "[WELLS FARGO BANK - ORGANIZATION]"),  # short, other entity: distinct
    ]
    kept, removed, pairs = near_dedup_rows(rows, NearDedupConfig())
    assert [row["source"]["line"] for row in kept] == [1, 4, 5, 6]
    assert [item.row["source"]["line"] for item in removed] == [2, 3]
    assert removed[0].reason == "near-duplicate of f.jsonl:1 (similarity 1.00)"
    assert removed[1].kind == "near-duplicate" and 0.85 <= pairs[1]["similarity"] < 1
    assert pairs[0]["kept"].startswith("The Borrower shall repay")


def test_threshold_is_configurable():
    rows = [qa(1, BASE + " from 2024."), qa(2, BASE + " from 2025 onwards.")]
    assert len(near_dedup_rows(rows, NearDedupConfig(threshold=0.95))[0]) == 2
    assert len(near_dedup_rows(rows, NearDedupConfig(threshold=0.7))[0]) == 1


def test_raw_text_rows():
    rows = [{"text": BASE, "source": {"file": "d.md", "line": n}} for n in (1, 2)] + [
        {"text": "Completely different text about interest rates.", "source": {"file": "d.md", "line": 3}}
    ]
    kept, removed, _ = near_dedup_rows(rows, NearDedupConfig())
    assert [row["source"]["line"] for row in kept] == [1, 3] and len(removed) == 1


def test_alike_prompts_with_different_answers_are_kept():
    # The answer is what the model learns: another entity list, or another spelling of it, is another row.
    rows = [
        qa(1, "SILICON VALLEY BANK", "[SILICON VALLEY BANK - ORGANIZATION]"),
        qa(2, "Silicon Valley Bank", "[Silicon Valley Bank - ORGANIZATION]"),
        qa(3, "Bank may enter premises where the Collateral is located and take possession of it", "[Bank - ORGANIZATION]"),
        qa(4, "Agent may enter premises where the Collateral is located and take possession of it", "No entities found"),
    ]
    kept, removed, _ = near_dedup_rows(rows, NearDedupConfig(threshold=0.5))
    assert len(kept) == 4 and not removed


def test_rows_with_their_own_document_in_the_system_prompt_are_not_copies():
    """OpenAI chat files often carry the row's document (an email, a passage) in a system message; rows that ask
    the same question of other documents are other rows. A system prompt every row shares still counts for none."""
    def email(line: int, body: str, answer: str) -> dict:
        messages = [{"role": "system", "content": "Read the email, then answer the question."},
                    {"role": "system", "content": body},
                    {"role": "user", "content": "Q: Find the $ value paid to Deel?"},
                    {"role": "assistant", "content": answer}]
        return {"messages": messages, "label": None, "source": {"file": "mail.jsonl", "line": line}}

    rows = [email(1, "Your card was charged $80.00 by Deel for the March invoice of the contractor plan.", "unknown"),
            email(2, "Mercury: Upwork initiated an ACH charge of $1,240.50 against checking account 7681.", "unknown"),
            email(3, "Your card was charged $80.00 by Deel for the March invoice of the contractor plan!", "unknown")]
    kept, removed, _ = near_dedup_rows(rows, NearDedupConfig())
    assert [row["source"]["line"] for row in kept] == [1, 2]
    assert removed[0].reason == "near-duplicate of mail.jsonl:1 (similarity 1.00)"


def test_rows_without_word_characters_are_compared_by_their_symbols():
    rows = [qa(line, prompt, answer) for line, (prompt, answer) in enumerate([("😀", "👍"), ("😢", "👎"), ("?!", "!!")], 1)]
    kept, removed, _ = near_dedup_rows(rows, NearDedupConfig())
    assert kept == rows and removed == []
