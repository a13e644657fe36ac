# SPDX-License-Identifier: Apache-2.0
"""Gateware: the sparse-convolution engine (:mod:`.engine`) and its blocks (window fetcher
:mod:`.fetch`, requantization :mod:`.requant`, UART :mod:`.uart`), every data layout
(:mod:`.layouts`), the memory images (:mod:`.images`), the parameters (:mod:`.params`), the cycle
model (:mod:`.perf`), the standalone layer top of the regressions (:mod:`.layer_top`) and the
``verilog`` command (:mod:`.verilog`)."""
