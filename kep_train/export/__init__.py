# SPDX-License-Identifier: Apache-2.0
"""Export stage: post-training int8 quantization of a pruned model (:mod:`.quantize`), the
compressed ``.kep`` file (:mod:`.kepfile`, specified in ``docs/kep-format.md``) and the
``export`` / ``inspect`` commands (:mod:`.cli`)."""
