"""The silence watchdog the long CPU jobs run under (``conftest.run_watched``): a slow command that keeps
printing goes on, a silent one is stopped, and so is one past its limit. Real subprocesses."""
import sys

import pytest
from conftest import Silent, run_watched


def python(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def test_a_command_that_keeps_printing_outlives_the_quiet_limit():
    done = run_watched(python("import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.5)\n"),
                       quiet=2, limit=60)
    assert done.returncode == 0 and done.stdout.split() == ["0", "1", "2", "3", "4", "5"]


def test_a_silent_command_is_stopped_with_what_it_printed():
    body = "import sys, time\nprint('started', flush=True)\nprint('warn', file=sys.stderr, flush=True)\ntime.sleep(600)\n"
    with pytest.raises(Silent) as err:
        run_watched(python(body), quiet=1.5, limit=60)
    assert err.value.reason == "printed nothing for 2 s" and err.value.output == "started\n"
    assert err.value.stderr == "warn\n"


def test_a_command_past_its_limit_is_stopped_even_while_printing():
    with pytest.raises(Silent) as err:
        run_watched(python("import time\nwhile True:\n    print('.', flush=True)\n    time.sleep(0.2)\n"),
                    quiet=5, limit=1.5)
    assert err.value.reason == "ran past 2 s" and err.value.output.startswith(".\n")
