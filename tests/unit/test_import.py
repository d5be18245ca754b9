"""Reading job files as CRM users export them: CSV (comma or semicolon, UTF-8) and JSON Lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.model import InvalidJob
from jobs.service import UsageProblem, read_rows, request_from_fields


def _rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    return list(read_rows(path))


def test_semicolon_separated_csv_from_excel_is_read(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text('operation;contact;tags;score\nAdd Tag;C-1;"VIP; Webinar";\nSet Score;C-2;Lead;5\n',
                    encoding="utf-8")
    rows = _rows(path)
    assert rows == [(2, {"operation": "Add Tag", "contact": "C-1", "tags": "VIP; Webinar"}),
                    (3, {"operation": "Set Score", "contact": "C-2", "tags": "Lead", "score": "5"})]


def test_a_row_longer_than_the_header_is_reported_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("operation,contact,tags\nAdd Tag,C-1,X,extra\n", encoding="utf-8")
    assert _rows(path) == [(2, {"__error__": "longer than the header (3 columns)"})]


def test_a_row_that_is_not_utf8_is_a_bad_row_and_a_header_that_is_not_makes_the_file_bad(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes("operation,contact,tags\nAdd Tag,C-1,Café\nAdd Tag,C-2,VIP\n".encode("cp1252"))
    assert _rows(path) == [
        (2, {"__error__": "not UTF-8 text (the byte 0xe9); save the file as 'CSV UTF-8' or JSON Lines"}),
        (3, {"operation": "Add Tag", "contact": "C-2", "tags": "VIP"})]
    path.write_bytes("operation,contact,tags,ménage\n".encode("cp1252"))
    with pytest.raises(UsageProblem, match=r"is not UTF-8 text \(the byte 0xe9 on its first line\); save it as "
                                           r"'CSV UTF-8'"):
        _rows(path)


def test_a_json_array_is_refused_with_how_to_make_json_lines_of_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text('[\n  {"operation": "add_tag", "contact": "C-1", "tags": "VIP"}\n]\n', encoding="utf-8")
    with pytest.raises(UsageProblem) as refused:
        _rows(path)
    assert str(refused.value) == (f"{path} is a JSON array; give one JSON object per line (JSON Lines) instead, "
                                  f"such as the output of: jq -c '.[]' {path}")


def test_a_header_without_operation_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("contact,tags\nC-1,X\nC-2,Y\n", encoding="utf-8")
    with pytest.raises(UsageProblem, match="no 'operation' column"):
        _rows(path)


def test_a_blank_cell_is_an_absent_field(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("operation,contact,tags\nAdd Tag,,Spring campaign\n", encoding="utf-8")
    [(_, fields)] = _rows(path)
    assert request_from_fields(fields).target is None  # a tag-only Add Tag, as the sheet says


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_record_id_given_on_purpose_is_refused(blank: str) -> None:
    with pytest.raises(InvalidJob, match="Contact is empty; give the CRM id of the record"):
        request_from_fields({"operation": "Add Tag", "tags": "X", "contact": blank})


def test_two_records_are_named_in_a_sentence() -> None:
    with pytest.raises(InvalidJob, match=r"names more than one record \(contact, account\)"):
        request_from_fields({"operation": "Add Tag", "tags": "X", "contact": "C-1", "account": "A-1"})


@pytest.mark.parametrize(("fields", "problem"), [
    ({"operation": "add_tag", "contact": {"id": "C-1"}, "tags": "VIP"},
     "contact is {'id': 'C-1'}; it must be text or a whole number."),
    ({"operation": "add_tag", "contact": "C-1", "tags": ["A", 5, None]}, "tags has 5; every tag is a name (text)."),
    ({"operation": "add_tag", "contact": "C-1", "tags": {"name": "A"}},
     "tags is {'name': 'A'}; give a tag name, or a list of names."),
    ({"operation": ["add_tag"], "contact": "C-1", "tags": "A"}, "operation is ['add_tag']; it must be text."),
    ({"operation": "set_score", "contact": "C-1", "tags": "A", "score": True}, "score is True; give a whole number."),
    ({"operation": "add_tag", "contact": "C-1", "tag": "A", "tags": "B"},
     "Both tag and tags are given; they are the same field, so give one of them."),
    ({"operation": "add_tag", "contact": ["\x1b[31m" + "x" * 200], "tags": "A"},  # escaped, and cut to 80
     "contact is ['\\x1b[31m" + "x" * 69 + "…; it must be text or a whole number."),
])
def test_a_value_of_the_wrong_type_is_refused_by_name_not_queued_as_garbage(
    fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(InvalidJob) as refused:
        request_from_fields(fields)
    assert problem in refused.value.problems[0]


@pytest.mark.parametrize("record", ["C-1; C-2", "C-1,C-2"])
def test_a_record_id_that_lists_records_asks_for_one_job_per_record(record: str) -> None:
    with pytest.raises(InvalidJob, match="a job is about one record, so create one job per record"):
        request_from_fields({"operation": "add_tag", "contact": record, "tags": "A"})


def test_a_numeric_record_id_from_json_is_taken_as_text() -> None:
    request = request_from_fields({"operation": "add_tag", "contact": 1001, "tags": "A"})
    assert request.target is not None and request.target.id == "1001"


def test_a_row_shorter_than_the_header_is_reported_not_shifted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("operation,tags,contact\nAdd Tag,VIP\nAdd Tag,VIP,C-2\n", encoding="utf-8")
    assert _rows(path) == [(2, {"__error__": "shorter than the header (2 of 3 columns)"}),
                           (3, {"operation": "Add Tag", "tags": "VIP", "contact": "C-2"})]


@pytest.mark.parametrize(("header", "named"), [
    ("operation,tags,contact,tags", "names 'tags' more than once"),
    ("operation,tag,contact,tags", "has both 'tag' and 'tags', which are the same column"),
])
def test_a_header_with_a_column_twice_is_refused(tmp_path: Path, header: str, named: str) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(f"{header}\nAdd Tag,A,C-1,B\n", encoding="utf-8")
    with pytest.raises(UsageProblem) as refused:
        _rows(path)
    assert str(refused.value) == f"{path}: the header {named}; keep one column for each."


def test_a_quote_never_closed_is_reported_on_the_line_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text('operation,contact,tags\nAdd Tag,C-1,VIP\nAdd Tag,C-2,"VIP\nAdd Tag,C-3,VIP\n', encoding="utf-8")
    assert _rows(path) == [
        (2, {"operation": "Add Tag", "contact": "C-1", "tags": "VIP"}),
        (3, {"__error__": "a quote opened in it is never closed, so the rest of the file is inside it"})]


@pytest.mark.parametrize(("fields", "problems"), [
    ({"operation": "add_tag", "contact": "C-\ud800", "tags": "A"},  # text only, but not all of it is text
     ["contact is 'C-\\ud800', which is not text: it holds a lone surrogate (such as \\ud800)."]),
    ({"operation": "add_tag", "contact": "C-1", "tags": "A", "request_id": "r\n1"},
     ["request_id is 'r\\n1'; give at most 100 printable characters, such as the id of the row in the system the "
      "job comes from."]),
    ({"operation": "add_tag", "contact": 5.5, "tag": "A", "tags": "B", "request_id": "r" * 101},
     ["contact is 5.5; it must be text or a whole number.",
      "Both tag and tags are given; they are the same field, so give one of them.",
      f"request_id is '{'r' * 78}…; give at most 100 printable characters, such as the id of the row in the system "
      "the job comes from."]),
])
def test_every_problem_of_a_row_is_told_in_order_whether_its_fields_are_all_text_or_not(
    fields: dict[str, object], problems: list[str]
) -> None:
    with pytest.raises(InvalidJob) as refused:
        request_from_fields(fields)
    assert refused.value.problems == problems


def test_rows_after_blank_lines_and_after_an_unreadable_row_are_reported_on_their_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text('operation,contact,tags\nAdd Tag,C-1,VIP\n\n\nAdd Tag,C-2\nAdd Tag,C-3,"VIP"x\nAdd Tag,C-4\n\n'
                    'Add Tag,C-5,VIP\n', encoding="utf-8")
    assert _rows(path) == [(2, {"operation": "Add Tag", "contact": "C-1", "tags": "VIP"}),
                           (5, {"__error__": "shorter than the header (2 of 3 columns)"}),
                           (6, {"__error__": "not readable as CSV (',' expected after '\"')"}),
                           (7, {"__error__": "shorter than the header (2 of 3 columns)"}),
                           (9, {"operation": "Add Tag", "contact": "C-5", "tags": "VIP"})]
