"""The watcher's interval after a long quiet spell: at its ceiling, never an overflow."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from aiores._watch import Watcher
from aiores.adaptor import URL, PollPolicy
from aiores.testing import FakeClock


def test_a_long_quiet_spell_stays_at_the_ceiling() -> None:
    policy = PollPolicy(floor=1.0, ceiling=8.0, backoff=2.0, jitter=0.0)
    adaptor: Any = SimpleNamespace(
        poll=policy, url=URL.parse("fake://"), set_listener=lambda listener: None
    )
    watcher = Watcher(
        adaptor, clock=FakeClock(), spawn=lambda *a, **k: None, name="t", rng=random.Random(1)
    )
    assert watcher.quiet_delay(1) == 1.0
    assert watcher.quiet_delay(3) == 4.0
    # 2.0 ** 1100 overflows a float: a watcher quiet for ~2 h at an 8 s ceiling died of it.
    assert watcher.quiet_delay(1100) == 8.0
    assert watcher.quiet_delay(10**9) == 8.0
