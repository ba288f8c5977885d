"""`python -m kd_keras.cli`: the same as the `kd-keras` console script."""

import sys

from kd_keras.cli import main

sys.exit(main())
