# SPDX-License-Identifier: Apache-2.0
"""Training stage: the generic dense -> reg -> finetune pipeline (:mod:`.pipeline`), its CIFAR-10
and ImageNet command lines (:mod:`.cifar`, :mod:`.imagenet`), multi-process helpers
(:mod:`.distributed`), checkpoints (:mod:`.checkpoint`) and run outputs (:mod:`.report`)."""
