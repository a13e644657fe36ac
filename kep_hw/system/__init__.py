# SPDX-License-Identifier: Apache-2.0
"""System: what runs a whole network around the engine. The network plan shared by the build
and the host (:mod:`.plan`), the frame protocol (:mod:`.protocol`), the frame receiver and
transmitter (:mod:`.framing`), the layer sequencer (:mod:`.sequencer`), the buffers and output
writer (:mod:`.buffers`) and the clock-agnostic top level :class:`~.top.KepSystem` (:mod:`.top`)."""
