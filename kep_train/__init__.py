# SPDX-License-Identifier: Apache-2.0
"""kep_train: Kernel Elements Pruning (KEP) of CNNs, training, int8 export and golden model.

Stages, one subpackage each: :mod:`kep_train.data` (data sets as tensors), :mod:`kep_train.train`
(the dense -> reg -> finetune pipeline, checkpoints, reports), :mod:`kep_train.pruning` (the KEP
pruning API), :mod:`kep_train.export` (int8 quantization and the ``.kep`` file),
:mod:`kep_train.golden` (the one integer arithmetic and the bit-exact golden model).
"""

from kep_common import __version__

__all__ = ["__version__"]
