"""Reads Parquet objects with `parquet` (parquet-python), a reader that knows only Parquet 1.0
encodings (PLAIN and PLAIN_DICTIONARY v1 data pages), as VPC-flow-log tooling in Python uses,
and prints one JSON document per file: its rows, strings decoded, nulls as null.

    parquet_rows_v1.py FILE...
"""
import json
import sys

import parquet


def plain(value):
    return value.decode() if isinstance(value, bytes) else value


for path in sys.argv[1:]:
    with open(path, "rb") as file:
        rows = [[plain(value) for value in row] for row in parquet.reader(file)]
    print(json.dumps({"file": path, "rows": rows}))
