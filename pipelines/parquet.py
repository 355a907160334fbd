"""Parquet files -> protected Parquet files (same names, rows, order and other columns).

    python pipelines/make_sample_data.py
    accelerate launch pipelines/parquet.py --config pipelines/parquet.yaml

The image column (raw bytes, or a Hugging Face ``Image`` struct<bytes, path>) is
replaced by PNG bytes; the schema, its metadata and every other column are kept.
"""

import sys

from udp_datasets.cli.pipelines import run_pipeline

if __name__ == "__main__":
    sys.exit(run_pipeline("parquet"))
