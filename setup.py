"""pfascannet: PFA-ScanNet (Zhao et al., MICCAI 2019) in TensorFlow / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="pfascannet",
    version="0.1.0",
    description=(
        "PFA-ScanNet: dense, exact whole-slide scanning for breast-cancer "
        "metastasis detection and pN-staging (Camelyon16/17)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pfascannet", "pfascannet.*"]),
    # The demo's weights (weights/demo.json records how they were made) and the tiny ones tests use.
    package_data={"pfascannet": ["weights/*.weights.h5", "weights/*.json",
                                 # `pfascannet view`: its pages and the vendored OpenSeadragon (no CDN at run time)
                                 "viewer/static/*.html", "viewer/static/*.js", "viewer/static/*.css",
                                 "viewer/static/openseadragon/*.js", "viewer/static/openseadragon/*.txt",
                                 "viewer/static/openseadragon/images/*.png"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "openslide-python>=1.3",
        "openslide-bin>=4.0",
        "numpy>=1.26",
        "opencv-python-headless>=4.8",
        "scikit-learn>=1.3",
        "scikit-image>=0.22",
        "pandas>=2.0",
        "absl-py>=1.4",
        "tifffile>=2023.7",
        "imagecodecs>=2023.7",
        "defusedxml>=0.7",
        "matplotlib>=3.7",
        "psutil>=5.9",
    ],
    extras_require={
        # Ray: cohort scans over a cluster (experiments/scan.py --ray); the dev
        # extra includes it so CI runs the Ray tests instead of skipping them.
        # Selenium drives the viewer's browser test (Debian's chromium + chromium-driver; .ci/run installs them);
        # hypothesis: the fuzzed-reader tests (tests/test_fuzz_readers.py).
        "dev": ["pytest>=7.4", "jax>=0.4.30", "ray>=2.9", "selenium>=4.11", "hypothesis>=6.0"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "ray": ["ray>=2.9"],
        # TensorBoard shows the scalars the trainer writes (train/*) under
        # <workdir>/tensorboard; TensorFlow no longer installs it itself.
        "train": ["tensorboard>=2.16"],
    },
    entry_points={
        "console_scripts": [
            "pfascannet=pfascannet.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
