"""kd_keras: knowledge distillation, pruning, quantization and export for Keras 3."""

from setuptools import find_packages, setup

CORE = ["keras>=3.12", "numpy", "pyyaml", "rich"]
EXTRAS = {
    # CPU wheel: CI and the 2-core dev machines have no GPU; users with one
    # install `tensorflow` themselves and the rest of the stack is unchanged.
    "tensorflow": ["tensorflow-cpu>=2.16", "tf_keras>=2.16"],
    "hub": ["keras-hub>=0.20", "safetensors"],
    "tfmot": ["tensorflow-model-optimization>=0.8", "tf_keras>=2.16"],
    "data": ["tensorflow-datasets", "importlib_resources", "scikit-learn", "matplotlib"],
    "export": ["tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"],
    # import-linter: `lint-imports` checks which way the package imports run;
    # pytest-xdist: `.ci/test` runs the suite on two workers.
    "test": ["pytest", "pytest-xdist", "ruff", "import-linter"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})
# Benchmark-only tool (`python -m benchmarks.mutation`), so not part of "all".
EXTRAS["mutation"] = ["mutmut>=3.8,<4"]

setup(
    name="kd_keras",
    version="0.1.0",
    description=(
        "Keras 3 model compression: knowledge distillation, pruning, "
        "quantization-aware training, TFLite/ONNX export and benchmarks."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kd_keras", "kd_keras.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["kd-keras=kd_keras.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
