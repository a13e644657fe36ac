# SPDX-License-Identifier: Apache-2.0
"""kep_train: Kernel Elements Pruning (KEP) of CNNs, training, int8 export and golden model."""

__version__ = "0.1.0"
