# SPDX-License-Identifier: Apache-2.0
"""Host side: the framed link to a board or its simulation (:mod:`.link`), the host side of one
engine layer (memory images, configuration, golden outputs: :mod:`.driver`) and the ``run``
command (:mod:`.run`)."""
