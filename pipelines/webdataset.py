"""WebDataset tar shards -> protected tar shards (same names, keys, order and members).

    python pipelines/make_sample_data.py                 # tiny real shards to try it on
    accelerate launch pipelines/webdataset.py --config pipelines/webdataset.yaml
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        pipelines/webdataset.py --config pipelines/webdataset.yaml --set protection.steps=20

Each ``KEY.jpg`` (any image member) becomes ``KEY.png``; captions, json, cls and every
other member are copied byte for byte. Re-running resumes; see udp_datasets/jobs/shard_job.py.
"""

import sys

from udp_datasets.cli.pipelines import run_pipeline

if __name__ == "__main__":
    sys.exit(run_pipeline("webdataset"))
