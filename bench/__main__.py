"""`python -m bench [--smoke]`: run the benchmark harness."""

import sys

from bench.harness import main

sys.exit(main())
