# SPDX-License-Identifier: Apache-2.0
"""Board glue: profiles of ``boards/*.toml`` (:mod:`.profiles`), the ECP5 PLL (:mod:`.pll`), the
board top level (:mod:`.top`), the open toolchain (:mod:`.toolchain`) and the ``build`` command
(:mod:`.build`)."""
