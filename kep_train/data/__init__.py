# SPDX-License-Identifier: Apache-2.0
"""kep_train.data.cifar."""
