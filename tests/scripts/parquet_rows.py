"""Reads Parquet objects with pyarrow, independent of the agent's parquet crate, and prints one
JSON document per file: its columns (name, physical type, logical type) and its rows.

    parquet_rows.py FILE...
"""
import json
import sys

import pyarrow.parquet as pq

for path in sys.argv[1:]:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema
    columns = [
        {
            "name": schema.column(i).name,
            "physical_type": schema.column(i).physical_type,
            "logical_type": str(schema.column(i).logical_type),
        }
        for i in range(len(schema))
    ]
    table = parquet.read()
    rows = [list(row.values()) for row in table.to_pylist()]
    print(json.dumps({"file": path, "columns": columns, "rows": rows}))
