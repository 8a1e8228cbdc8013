"""hagentctl's tables: OpenStack-style boxes with multi-line cells."""
from hagent.ctl import render


def test_box_aligns_columns_and_draws_rules():
    text = render.box(("uuid", "name"), [("u-1", "a"), ("u-22", None)])
    assert text.splitlines() == [
        "+------+------+",
        "| uuid | name |",
        "+------+------+",
        "| u-1  | a    |",
        "| u-22 | None |",
        "+------+------+",
    ]


def test_multi_line_cells_and_values():
    text = render.box(("Field", "Value"), [("payload", {"event": "STOPPED", "x": True}), ("l", [1, 2])])
    lines = text.splitlines()
    assert "| payload | event=STOPPED |" in lines
    assert "|         | x=True        |" in lines
    assert "| l       | 1             |" in lines
    assert "|         | 2             |" in lines
    assert len({len(line) for line in lines}) == 1


def test_empty_list_still_has_headers():
    assert render.list_table([], ("uuid", "name")).splitlines()[1] == "| uuid | name |"


def test_show_table_puts_known_fields_first_and_skips():
    text = render.show_table({"z": 1, "name": "n", "uuid": "u", "big": {"a": {"b": 1}}},
                             ("uuid", "name"), skip=("big",))
    fields = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert fields == ["Field", "uuid", "name", "z"]


def test_cell_nested_dict_is_json():
    assert render.cell({"a": {"b": 1}}) == '{"a": {"b": 1}}'
    assert render.cell(False) == "False"
