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


def test_recovery_times_durations_and_wrapping():
    from hagent.ctl import recovery

    assert recovery.short_time("2024-05-01T10:00:03.250123+00:00") == "2024-05-01T10:00:03.250Z"
    assert recovery.short_time("2024-05-01T12:00:03+02:00") == "2024-05-01T10:00:03.000Z"
    assert recovery.short_time(None) is None and recovery.short_time("soon") == "soon"
    # a step's end: the time of day alone on its start's date, else the full time
    assert recovery.end_time("2024-05-01T10:00:03+00:00", "2024-05-01T10:00:05.5+00:00") == \
        "10:00:05.500Z"
    assert recovery.end_time("2024-05-01T23:59:59+00:00", "2024-05-02T00:00:01+00:00") == \
        "2024-05-02T00:00:01.000Z"
    assert recovery.end_time("2024-05-01T10:00:03+00:00", None) is None
    assert recovery.took("2024-05-01T10:00:03+00:00", "2024-05-01T10:01:04.5+00:00") == "61.500 s"
    assert recovery.took("2024-05-01T10:00:03+00:00", None) is None
    text = "from vm_state=active task_state=- power_state=1; to a host the scheduler picks"
    wrapped = recovery.wrap(text)
    assert max(map(len, wrapped.splitlines())) <= recovery.TEXT_WIDTH
    assert wrapped.replace("\n", " ") == text
    assert recovery.wrap("short") == "short" and recovery.wrap(None) is None


def test_recovery_outcomes_and_tallies():
    from hagent.ctl import recovery

    assert recovery.outcome({"outcome": None, "term": 3}) == "open"
    assert recovery.outcome({"outcome": "done", "term": 3, "outcome_term": 3}) == "done"
    assert recovery.outcome({"outcome": "failed", "term": 3, "outcome_term": 5}) == \
        "failed (term 5)"
    assert recovery.tally([], len) == "none"
    assert recovery.tally([{"s": "a"}, {"s": "b"}, {"s": "a"}], lambda r: r["s"]) == "3: 2 a, 1 b"
