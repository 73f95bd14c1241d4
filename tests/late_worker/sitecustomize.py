"""Put on PYTHONPATH by tests/test_cli_edges.py: the SDK worker ``worker_0`` of a multi-processing run starts
LATE_WORKER_SECONDS late (before it imports Beam or connects), as a worker on a loaded machine may."""
import os
import time

if "PIPELINE_OPTIONS" in os.environ and os.environ.get("WORKER_ID") == "worker_0":
  time.sleep(float(os.environ.get("LATE_WORKER_SECONDS", "0")))
