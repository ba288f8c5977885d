"""Export with parity checks: every artifact is re-loaded in its runtime and
compared with the Keras model before it is published (atomically), and the
figures are written beside it as `<artifact>.parity.json`.

Example:

```python
from kd_keras import export
export.to_tflite(student, "out/student.tflite")
export.to_onnx(student, "out/student.onnx")
```
"""

from kd_keras.export.onnx import onnx_export_available, to_onnx
from kd_keras.export.parity import ParityError, ParityReport, check_parity, compare, load_report
from kd_keras.export.saved_model import to_saved_model
from kd_keras.export.tflite import to_tflite
from kd_keras.io import (
    atomic_path,
    check_output_path,
    write_bytes,
    write_json,
    write_text,
)
from kd_keras.runtime import InputSpec, Runner, load_runner, runtime_of

__all__ = [
    "InputSpec",
    "ParityError",
    "ParityReport",
    "Runner",
    "atomic_path",
    "check_output_path",
    "check_parity",
    "compare",
    "load_report",
    "load_runner",
    "onnx_export_available",
    "runtime_of",
    "to_onnx",
    "to_saved_model",
    "to_tflite",
    "write_bytes",
    "write_json",
    "write_text",
]
