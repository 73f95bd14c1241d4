"""Shared pytest setup. Helpers live in tests/helpers.py (``from tests.helpers import ...``)."""

import os
import sys

# Before anything imports TensorFlow: keep its C++ logging quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Make ``tests`` and ``beam_job`` importable however pytest is started.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
