"""Defaults that several modules share, each written once.

Soft-target settings are tuned per use, so there is one named pair per use
rather than one temperature for everything. This module imports nothing (it
is on the ground floor of the package layering), so the command line's
`--help` can read the defaults without loading a framework.

Example:

```python
from kd_keras import defaults

defaults.DEFAULT_TEMPERATURE  # 2.0: a pipeline's `distill.temperature` unless set
```
"""

# A distillation term built without a temperature (`SoftTargetKD()`, `DKD()`,
# the Distiller's default term): T = 4, Hinton et al.'s and DKD's setting.
KD_TEMPERATURE = 4.0

# The pipeline's `distill` section and `kd-keras distill / prune`. Chosen on a
# Fashion-MNIST training-set validation split (benchmarks/tune_distillation.py,
# RESULTS.md section 1); T = 4 with alpha = 0.1 came out below training without
# a teacher there.
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5

# QAT fine-tunes a trained student for a few epochs at a low rate; there T = 1
# beat T = 2 (which only tied training on labels) on the same kind of split
# (benchmarks/tune_distillation.py --qat, RESULTS.md section 4).
DEFAULT_QAT_TEMPERATURE = 1.0
DEFAULT_QAT_ALPHA = 0.2

# `kd-keras demo` on the 8x8 digits, chosen on a validation split carved out of
# the digits training set (README, "Demo"), never on the test set.
DEMO_TEMPERATURE = 8.0
DEMO_ALPHA = 0.1

# Post-training quantization choices of `quantization.quantize_post_training`,
# the pipeline's `quantize.modes` and `kd-keras quantize --modes`.
PTQ_MODES = ("dynamic", "int8", "float16")
