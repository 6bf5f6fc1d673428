"""Reading data files into Tables, every DataError case, and writing score files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from connectors.file import DataError, Table, check_min_rows, read_table, sniff_separator
from connectors.writer import write_scores_csv

SKAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "skab"
SKAB_FILE = SKAB / "valve1" / "0.csv"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_separator_is_sniffed_from_the_header(tmp_path: Path, sep: str) -> None:
    rows = ["ts,a,b", "2020-01-01T00:00:00Z,1.5,2", "2020-01-01T00:00:01Z,2.5,3"]
    path = write(tmp_path, "\n".join(r.replace(",", sep) for r in rows) + "\n")
    table = read_table(path, timestamp_column="ts")
    assert table.channels == ["a", "b"]
    np.testing.assert_array_equal(table.values, [[1.5, 2.0], [2.5, 3.0]])
    np.testing.assert_array_equal(table.ts_ms, [1577836800000, 1577836801000])


def test_sniff_ignores_separators_inside_quotes() -> None:
    assert sniff_separator('"a,b,c";x;y\n') == ";"
    assert sniff_separator("single\n") == ","


def test_explicit_sep_wins(tmp_path: Path) -> None:
    # the header alone would suggest ';' but the caller says ','
    path = write(tmp_path, "a;x,b\n1,2\n3,4\n")
    table = read_table(path, sep=",")
    assert table.channels == ["a;x", "b"]


@pytest.mark.skipif(not SKAB_FILE.exists(), reason=f"benchmark data missing: {SKAB_FILE}")
def test_skab_file_reads_eight_channels_with_increasing_time() -> None:
    table = read_table(SKAB_FILE, timestamp_column="datetime", label_column="anomaly",
                       exclude_columns=("changepoint",))
    assert table.channels == ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
                              "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS"]
    assert table.values.shape == (table.frame_rows, 8) and table.values.dtype == np.float64
    assert np.all(np.diff(table.ts_ms) > 0)
    assert table.ts_ms[0] == 1583748873000  # 2020-03-09 10:14:33, naive = UTC
    assert table.timestamps[0] == "2020-03-09 10:14:33"
    assert set(np.unique(table.labels)) == {0, 1}
    assert np.isfinite(table.values).all()


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "time": pd.to_datetime(["2021-05-01T00:00:00Z", "2021-05-01T00:00:02Z",
                                "2021-05-01T00:00:03Z"]),
        "x": [1.0, 2.0, 3.0], "y": [4, 5, 6], "name": ["a", "b", "c"], "label": [0, 1, 0],
    })
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    table = read_table(path, timestamp_column="time", label_column="label")
    assert table.channels == ["x", "y"]  # the text column is not a channel
    np.testing.assert_array_equal(table.values, [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(table.ts_ms, [1619827200000, 1619827202000, 1619827203000])
    np.testing.assert_array_equal(table.labels, [0, 1, 0])
    assert table.timestamps[1] == "2021-05-01T00:00:02+00:00"


def test_parquet_epoch_column(tmp_path: Path) -> None:
    path = tmp_path / "data.pq"
    pd.DataFrame({"t": [1_600_000_000_000, 1_600_000_001_000], "v": [1.0, 2.0]}).to_parquet(path)
    table = read_table(path, timestamp_column="t")
    np.testing.assert_array_equal(table.ts_ms, [1_600_000_000_000, 1_600_000_001_000])
    assert list(table.timestamps) == ["1600000000000", "1600000001000"]


def test_epoch_seconds_and_milliseconds_by_magnitude(tmp_path: Path) -> None:
    path = write(tmp_path, "t,v\n1600000000,1\n1600000000.5,2\n")
    seconds = read_table(path, timestamp_column="t")
    np.testing.assert_array_equal(seconds.ts_ms, [1_600_000_000_000, 1_600_000_000_500])
    assert list(seconds.timestamps) == ["1600000000", "1600000000.5"]  # written back as given
    millis = read_table(write(tmp_path, "t,v\n1600000000000,1\n1600000000500,2\n", "ms.csv"),
                        timestamp_column="t")
    np.testing.assert_array_equal(millis.ts_ms, [1_600_000_000_000, 1_600_000_000_500])


def test_iso_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    path = write(tmp_path, "t,v\n2020-01-01T02:00:00+02:00,1\n2020-01-01T00:00:01.250,2\n")
    np.testing.assert_array_equal(read_table(path, timestamp_column="t").ts_ms,
                                  [1577836800000, 1577836801250])


def test_without_timestamp_column_rows_are_numbered(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a,b\n1,2\n3,4\n5,6\n"))
    assert table.ts_ms is None and table.labels is None
    assert list(table.timestamps) == ["0", "1", "2"]
    np.testing.assert_array_equal(table.row_ts_ms(), [0, 1000, 2000])
    assert table.frame_rows == 3


def test_channels_in_given_order_and_exclude_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a,b,c\n1,1,2,3\n2,4,5,6\n")
    assert read_table(path, channels=["c", "a"]).channels == ["c", "a"]
    np.testing.assert_array_equal(read_table(path, channels=["c", "a"]).values, [[3, 1], [6, 4]])
    assert read_table(path, exclude_columns=("id", "b")).channels == ["a", "c"]


def test_labels_accept_floats_and_are_not_channels(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "v,anomaly\n1,0.0\n2,1.0\n3,1\n"), label_column="anomaly")
    assert table.channels == ["v"]
    np.testing.assert_array_equal(table.labels, [0, 1, 1])
    assert table.labels.dtype == np.int64


def test_forward_fill_within_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,10\n,11\n,inf\n,13\n5,14\n")
    table = read_table(path, ffill_limit=3)
    np.testing.assert_array_equal(table.values[:, 0], [1, 1, 1, 1, 5])
    np.testing.assert_array_equal(table.values[:, 1], [10, 11, 11, 13, 14])  # inf is missing


def test_forward_fill_beyond_the_limit_names_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,10\n,11\n,12\n,13\n,14\n6,15\n")
    message = error(path, ffill_limit=3)
    assert "'a'" in message and "rows 1-4" in message and "ffill_limit is 3" in message
    assert read_table(path, ffill_limit=4).values[4, 0] == 1


def test_missing_first_row_cannot_be_filled(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b\n1,\n2,3\n"))
    assert "'b' row 0" in message and "no earlier value" in message


def test_earliest_unfillable_gap_is_reported(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b\n1,1\n2,\n3,\n4,1\n,1\n,1\n"), ffill_limit=1)
    assert "'b' rows 1-2" in message


@pytest.mark.parametrize("name, text, kwargs, expect", [
    ("x.csv", "a\n1\n", {"timestamp_column": "when"}, ["unknown column 'when'", "available: a"]),
    ("x.csv", "a\n1\n", {"channels": ["a", "zz"]}, ["unknown column 'zz'"]),
    ("x.csv", "a\n1\n", {"label_column": "lab"}, ["unknown column 'lab'"]),
    ("x.csv", "a\n1\n", {"exclude_columns": ("nope",)}, ["unknown column 'nope'"]),
    ("x.csv", "name,other\nx,y\n", {}, ["no numeric channels", "name, other"]),
    ("x.csv", "a,b\n", {}, ["no data rows"]),
    ("x.csv", "", {}, ["empty file"]),
    ("x.csv", "t,v\n2020-01-01,1\nyesterday,2\n", {"timestamp_column": "t"},
     ["row 1", "'yesterday'", "ISO-8601"]),
    ("x.csv", "t,v\n2020-01-01,1\n,2\n", {"timestamp_column": "t"}, ["row 1", "missing timestamp"]),
    ("x.csv", "t,v\n-5,1\n", {"timestamp_column": "t"}, ["row 0", "outside 1970..9999"]),
    ("x.csv", "a,b\n1,2\n3,oops\n4,5\n", {}, ["column 'b' row 1", "'oops' is not a number"]),
    ("x.csv", "a,b\n1,2\n3,oops\n", {"channels": ["a", "b"]}, ["'oops' is not a number"]),
    ("x.csv", "a;b\n1;2,5\n", {"channels": ["b"]}, ["decimal comma"]),
    ("x.csv", "v,lab\n1,0\n2,2\n", {"label_column": "lab"},
     ["label column 'lab' row 1", "not 0 or 1"]),
    ("x.csv", "v,lab\n1,0\n2,\n", {"label_column": "lab"}, ["row 1: missing value is not 0 or 1"]),
    ("x.csv", "t,v\n1,1\n", {"timestamp_column": "t", "channels": ["t"]}, ["both a channel"]),
    ("x.parquet", "not parquet at all", {}, ["cannot read"]),
    ("x.xlsx", "a\n1\n", {}, ["unsupported file type '.xlsx'"]),
])
def test_data_errors_are_one_line_and_name_the_problem(
    tmp_path: Path, name: str, text: str, kwargs: dict, expect: list[str],
) -> None:
    message = error(write(tmp_path, text, name), **kwargs)
    assert name in message
    for part in expect:
        assert part in message


def test_repeated_and_out_of_order_timestamps_are_read_as_written(tmp_path: Path) -> None:
    """The stream rules, not the reader, skip them, so train, score and serve treat them alike."""
    table = read_table(write(tmp_path, "t,v\n1,1\n3,2\n2,3\n3,4\n"), timestamp_column="t")
    assert table.ts_ms.tolist() == [1000, 3000, 2000, 3000]
    assert table.values[:, 0].tolist() == [1, 2, 3, 4]


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in error(tmp_path / "absent.csv")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("a,b\n1,2\n".encode() + b"\xff\xfe,\xe9\n")
    assert "not UTF-8" in error(path)


def test_check_min_rows(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a\n1\n2\n3\n"))
    check_min_rows(table, 3, "a window of 3")
    with pytest.raises(DataError, match=r"needs at least 30 rows for a window of 30, file has 3"):
        check_min_rows(table, 30, "a window of 30")


def test_write_scores_csv_blanks_unscored_rows(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "scores.csv"
    scores = np.array([np.nan, np.nan, 0.25, 3.5])
    flags = np.array([1, 0, 0, 1])  # a flag on an unscored row must not survive
    contributions = np.array([[np.nan, np.nan], [np.nan, np.nan], [0.1, 0.9], [2.0, 1.5]])
    write_scores_csv(out, ["t0", "t,1", "t2", "t3"], scores, flags, contributions, ["p", "q"])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "score", "is_anomaly", "contrib_p", "contrib_q"]
    assert rows[1] == ["t0", "", "0", "", ""]
    assert rows[2] == ["t,1", "", "0", "", ""]  # quoted by the writer, read back intact
    assert rows[3] == ["t2", "0.25", "0", "0.1", "0.9"]
    assert rows[4] == ["t3", "3.5", "1", "2.0", "1.5"]
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temporary file left


def test_write_scores_csv_without_contributions_round_trips_table(tmp_path: Path) -> None:
    path = write(tmp_path, "t;v\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;2\n")
    table: Table = read_table(path, timestamp_column="t")
    out = tmp_path / "scores.csv"
    write_scores_csv(out, table.timestamps, np.array([np.nan, 1.0]), np.array([0, 1]))
    back = pd.read_csv(out, dtype={"timestamp": str})
    assert list(back.columns) == ["timestamp", "score", "is_anomaly"]
    assert list(back["timestamp"]) == ["2020-01-01 00:00:00", "2020-01-01 00:00:01"]
    assert back["is_anomaly"].tolist() == [0, 1]


def test_write_scores_csv_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        write_scores_csv(tmp_path / "s.csv", ["a"], np.array([1.0, 2.0]), np.array([0, 0]))
