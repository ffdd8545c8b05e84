import io
import json
import zlib
from pathlib import Path

import pytest
from rich.console import Console

from domaintune.config import DataConfig
from domaintune.data.documents import Section, chunk_sections, read_document_rows, word_spans
from domaintune.data.prepare import prepare_dataset


def make_pdf(path: Path, pages: list[str], compress: bool = False) -> Path:
    """A minimal valid PDF with one line of Helvetica text per page (page streams Flate-compressed with `compress`)."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(len(pages)))}] /Count {len(pages)} >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        body = zlib.compress(stream.encode("latin-1")) if compress else stream.encode("latin-1")
        objects.append(f"<< /Length {len(body)}{' /Filter /FlateDecode' if compress else ''} >>\nstream\n".encode("latin-1")
                       + body + b"\nendstream")
    data, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += f"{number} 0 obj\n".encode() + (body if isinstance(body, bytes) else body.encode()) + b"\nendobj\n"
    xref = len(data)
    data += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    data += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    data += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(data)
    return path


@pytest.fixture
def library(tmp_path) -> Path:
    """A folder with one good document of each kind and three bad ones, plus an empty folder."""
    import docx
    from pypdf import PdfWriter

    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(folder / "terms.pdf", ["Late fees are 25 dollars per month.", "Interest accrues daily at 5 percent."])
    document = docx.Document()
    document.add_heading("Eligibility", level=1)
    document.add_paragraph("Applicants must be 18 years or older.")
    document.add_heading("Repayment", level=1)
    document.add_paragraph("Loans are repaid in monthly instalments.")
    document.save(folder / "policy.docx")
    (folder / "faq.html").write_text(
        "<html><head><script>var x = 1;</script></head><body><nav>Home | Menu</nav><h1>Cards</h1>"
        "<p>A replacement card costs 10 dollars.</p><ul><li>Report loss by phone.</li></ul></body></html>"
    )
    (folder / "guide.md").write_text("Intro line.\n\n# Opening an account\n\nBring a photo ID.\n\n## Fees\n\nNo monthly fee.\n")
    (folder / "notes.txt").write_text("Branches open at 9 am on weekdays.\n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", ["Secret terms."]))
    writer.encrypt("password")
    with open(folder / "locked.pdf", "wb") as handle:
        writer.write(handle)
    (folder / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_every_kind_is_read_with_page_or_section_and_bad_files_are_skipped(library):
    rows, skipped = read_document_rows([str(library / "docs"), str(library / "empty")], size=64, overlap=8)
    by_file = {}
    for row in rows:
        by_file.setdefault(Path(row["source"]["file"]).name, []).append(row)
    assert sorted(by_file) == ["faq.html", "guide.md", "notes.txt", "policy.docx", "terms.pdf"]
    assert [(r["source"]["page"], r["text"]) for r in by_file["terms.pdf"]] == [
        (1, "Late fees are 25 dollars per month."),
        (2, "Interest accrues daily at 5 percent."),
    ]
    assert [r["source"].get("section") for r in by_file["policy.docx"]] == ["Eligibility", "Repayment"]
    assert [r["source"]["line"] for r in by_file["policy.docx"]] == [1, 2]  # chunk numbers
    html = by_file["faq.html"][0]
    assert html["source"]["section"] == "Cards" and "replacement card costs 10 dollars" in html["text"]
    assert "var x" not in html["text"] and "Menu" not in html["text"]
    assert [r["source"].get("section") for r in by_file["guide.md"]] == [None, "Opening an account", "Fees"]
    reasons = {Path(item["file"]).name: item["reason"] for item in skipped}
    assert set(reasons) == {"broken.pdf", "locked.pdf", "image.txt", "empty"}
    assert reasons["locked.pdf"] == "encrypted PDF; decrypt it first"
    assert reasons["image.txt"] == "binary file, not text"
    assert reasons["broken.pdf"].startswith("cannot read PDF")
    assert reasons["empty"].startswith("folder has no documents")


def test_chunks_overlap_by_tokens():
    text = " ".join(f"w{i}" for i in range(100))
    chunks = list(chunk_sections([Section(text, {"page": 1})], size=40, overlap=10, tokenize=word_spans))
    assert [(chunk.split()[0], chunk.split()[-1], where) for chunk, where in chunks] == [
        ("w0", "w39", {"page": 1}),
        ("w30", "w69", {"page": 1}),
        ("w60", "w99", {"page": 1}),
    ]


def test_prepare_reads_documents_next_to_tables_and_goes_on(library):
    table = library / "qa.jsonl"
    table.write_text(json.dumps({"prompt": "Where is the branch?", "completion": "On Main Street."}) + "\n")
    out = io.StringIO()
    config = DataConfig(train=[str(table), str(library / "docs"), str(library / "empty")], split={"validation": 0.0, "test": 0.0})
    card = prepare_dataset(config, library / "out", seed=0, console=Console(file=out, width=300))
    assert card["splits"]["train"] == 1 + 2 + 2 + 1 + 3 + 1
    assert {file["format"] for file in card["files"]} == {"prompt_completion", "document"}
    assert len(card["documents_skipped"]) == 4
    assert f"skipped {library / 'docs' / 'locked.pdf'}: encrypted PDF; decrypt it first" in out.getvalue()


def test_a_docx_zip_bomb_is_skipped_before_it_is_unpacked(tmp_path):
    import zipfile

    import docx

    good = tmp_path / "good.docx"
    document = docx.Document()
    document.add_paragraph("Fees are listed below.")
    document.save(good)
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename))
        # 3 MB of zeros compress to a few KB: over a 1 MB cap, the document is skipped unread.
        target.writestr("word/media/padding.bin", b"\0" * 3_000_000)
    assert bomb.stat().st_size < 100_000
    rows, skipped = read_document_rows([str(good), str(bomb)], size=64, overlap=8, max_member_mb=1)
    assert [Path(row["source"]["file"]).name for row in rows] == ["good.docx"]
    assert skipped == [{"file": str(bomb), "reason": "word/media/padding.bin unpacks to 3.0 MB, over documents.max_member_mb (1 MB)"}]
    assert DataConfig().documents.max_member_mb == 50


def test_docx_tables_headers_and_footers_are_read(tmp_path):
    import docx

    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "Acme Bank confidential"
    document.sections[0].footer.paragraphs[0].text = "Page footer: version 7"
    document.add_paragraph("Fees:")
    table = document.add_table(rows=2, cols=2)
    for row, (name, fee) in zip(table.rows, [("Card replacement", "10 dollars"), ("Wire transfer", "25 dollars")]):
        row.cells[0].text, row.cells[1].text = name, fee
    document.add_paragraph("End of schedule.")
    document.save(tmp_path / "fees.docx")
    rows, skipped = read_document_rows([str(tmp_path / "fees.docx")], size=200, overlap=8)
    text = "\n".join(row["text"] for row in rows)
    assert not skipped
    assert text.index("Fees:") < text.index("Card replacement | 10 dollars") < text.index("End of schedule.")
    assert "Wire transfer | 25 dollars" in text
    assert "Acme Bank confidential" in text and "Page footer: version 7" in text


def test_html_text_outside_paragraphs_is_read():
    from domaintune.data.documents import _read_html

    html = (
        "<html><body><nav>Menu</nav><h1>Rates</h1><div>Savings pay 2 percent.</div>"
        "<div><span>Checking pays</span> <span>nothing.</span></div>"
        "<table><tr><th>Term</th><th>Rate</th></tr><tr><td>1 year</td><td>3 percent</td></tr></table>"
        "<dl><dt>APR</dt><dd>Annual percentage rate.</dd></dl><p>A <b>bold</b> claim.</p></body></html>"
    )
    sections = _read_html(html)
    text = "\n".join(section.text for section in sections)
    assert sections[-1].where == {"section": "Rates"}
    for expected in ["Savings pay 2 percent.", "Checking pays nothing.", "Term", "3 percent", "APR", "Annual percentage rate.", "A bold claim."]:
        assert expected in text
    assert "Menu" not in text


def test_files_a_documents_folder_cannot_read_are_listed_with_the_reason(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Hours\n\nOpen at 9.\n")
    (folder / "faq.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (folder / "rates.csv").write_text("text\nx\n")
    (folder / "scan.png").write_bytes(b"\x89PNG")
    rows, skipped = read_document_rows([str(folder)], size=64, overlap=8)
    assert [Path(row["source"]["file"]).name for row in rows] == ["notes.md"]
    reasons = {Path(item["file"]).name: item["reason"] for item in skipped}
    assert reasons == {
        "faq.jsonl": "a data file inside a documents folder is not read as documents; list it in data.train to read its rows",
        "rates.csv": "a data file inside a documents folder is not read as documents; list it in data.train to read its rows",
        "scan.png": "not a document type (.pdf, .docx, .html, .htm, .md, .markdown, .txt)",
    }


def test_a_pdf_bomb_is_skipped_by_its_text_size(tmp_path):
    good = make_pdf(tmp_path / "good.pdf", ["Late fees are 25 dollars per month."])
    # Three pages of 600,000 repeated letters: a few kB compressed, 1.8 MB of text.
    bomb = make_pdf(tmp_path / "bomb.pdf", ["A" * 600_000] * 3, compress=True)
    assert bomb.stat().st_size < 20_000
    rows, skipped = read_document_rows([str(good), str(bomb)], size=64, overlap=8, max_member_mb=1)
    assert {row["source"]["file"] for row in rows} == {str(good)}
    assert skipped == [{"file": str(bomb), "reason": "its text passes documents.max_member_mb (1 MB) by page 2"}]
