#!/usr/bin/env bash
# Regenerates docker/constraints.txt, the exact version of every Python package in the
# worker image, from pyproject.toml (dependencies + the gpu, dashboard and dask extras)
# and docker/image-requirements.in. Run it after changing either file, then rebuild:
#
#     docker/update-constraints.sh            # uses `uv` from PATH
#     UV=/path/to/uv docker/update-constraints.sh
#
# The resolution targets the image, not the machine it runs on: CPython 3.11 on
# x86_64 Linux with glibc 2.35 (Ubuntu 22.04, the CUDA base image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
"${UV:-uv}" pip compile pyproject.toml docker/image-requirements.in \
    --extra gpu --extra dashboard --extra dask \
    --python-version 3.11 \
    --python-platform x86_64-manylinux_2_35 \
    --custom-compile-command docker/update-constraints.sh \
    --output-file docker/constraints.txt
