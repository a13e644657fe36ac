# SPDX-License-Identifier: Apache-2.0
"""The command-line tools' error handling (kep_common.errors.cli_errors)."""

import os
import signal

import pytest

from kep_common.errors import KepError, cli_errors


def test_kep_error_is_one_line_exit_2(capsys):
    @cli_errors
    def main():
        raise KepError("bad input")

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: bad input\n"


def test_sigterm_runs_the_finally_blocks(capsys):
    """A SIGTERM raises where the program is: its ``finally`` blocks (the build's: stop
    nextpnr) run, one line, exit code 143; the previous handler is back afterwards."""
    done = []

    @cli_errors
    def main():
        try:
            os.kill(os.getpid(), signal.SIGTERM)   # handled at the next bytecode
            raise AssertionError("not reached")
        finally:
            done.append(True)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 143
    assert done == [True]
    assert capsys.readouterr().err == "terminated\n"
    assert signal.getsignal(signal.SIGTERM) is before
