"""Speed benchmarks: the project against the diffusers-example reference loop (`make bench`)."""

import sys
from pathlib import Path

# The small random components ("tiny" shapes, the sampling bench's judge) are test fixtures, kept out of the
# library in tests/tiny_components.py: bench imports them from there.
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))
