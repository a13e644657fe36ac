# SPDX-License-Identifier: Apache-2.0
"""Data sets: CIFAR-10 as whole uint8 tensors (:mod:`.cifar`), ImageNet-layout folders
(:mod:`.imagenet`), and the one image-folder reader both use (:mod:`.folders`)."""
