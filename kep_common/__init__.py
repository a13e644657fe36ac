# SPDX-License-Identifier: Apache-2.0
"""kep_common: what the training and the hardware packages share (errors, atomic file output,
command dispatch, logging set-up); it imports neither of them."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("kep-toolkit")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
