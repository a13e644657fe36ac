# SPDX-License-Identifier: Apache-2.0
"""Golden stage: the one integer arithmetic shared with the RTL (:mod:`.intarith`,
``docs/arithmetic.md``), the paper's sparse convolution in exact integers (:mod:`.sparseconv`), and
the bit-exact golden model of a whole ``.kep`` network with its ``golden`` command
(:mod:`.evaluate`)."""
