"""The budget's asyncio side: grants as futures, the state file across a restart, what it logs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from collector.connect_budget import ConnectBudget, Kind
from collector.connect_gate import BANNED, TOO_MANY, ConnectGate


def _gate(state_file: Path | None) -> ConnectGate:
    return ConnectGate(ConnectBudget(limit=20, window=2.0), state_file=state_file)


def test_a_restarted_gate_keeps_the_previous_runs_ban_and_says_so(tmp_path: Path, caplog) -> None:
    state = tmp_path / "connect-budget.json"

    async def first_run() -> None:
        gate = _gate(state)
        gate.load()
        assert gate.request("a", Kind.FIRST).done()
        gate.refused(BANNED, 30.0)
        gate.refused(BANNED, 30.0)  # another attempt that was already on its way: the same ban

    async def second_run() -> bool:
        gate = _gate(state)
        gate.load()
        waiting = gate.request("a", Kind.RECONNECT)
        await asyncio.sleep(0.3)
        done = waiting.done()
        gate.withdraw("a")
        return done

    with caplog.at_level(logging.INFO, logger="collector.budget"):
        asyncio.run(first_run())
        assert not asyncio.run(second_run()), "no attempt while the previous run's ban lasts"
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 2
    assert critical[0].startswith("HTTP 418 from Binance: this IP is banned from connecting for 30 s")
    assert critical[1].startswith("the previous run was banned by Binance (HTTP 418): no connection is attempted")


def test_429_holds_every_waiting_attempt_and_the_wait_is_reported(caplog) -> None:
    async def run() -> list[str]:
        gate = _gate(None)
        gate.refused(TOO_MANY, 0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        futures = [gate.request(n, Kind.FIRST) for n in range(3)]
        await asyncio.gather(*futures)
        assert loop.time() - started >= 0.45
        return [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.INFO, logger="collector.budget"):
        messages = asyncio.run(run())
    assert messages[0].startswith("HTTP 429 from Binance: too many connection attempts")
    assert any(m.startswith("connection budget: 2 attempt(s) waiting (0 reconnect, 0 handover, 2 first connect)")
               for m in messages)
    assert messages[-1] == "connection budget: no attempt waiting"


@pytest.mark.parametrize("content", ["not json", '{"tat": 1}', "[]"])
def test_an_unreadable_state_file_starts_afresh_with_a_warning(tmp_path: Path, caplog, content: str) -> None:
    state = tmp_path / "connect-budget.json"
    state.write_text(content)

    async def run() -> bool:
        gate = _gate(state)
        gate.load()
        return gate.request("a", Kind.FIRST).done()

    assert asyncio.run(run())
    assert "starting afresh" in caplog.text


def test_a_state_file_that_cannot_be_written_is_reported_once(tmp_path: Path, caplog) -> None:
    async def run() -> None:
        gate = _gate(tmp_path / "missing-directory" / "connect-budget.json")
        for n in range(3):
            assert gate.request(n, Kind.FIRST).done()

    asyncio.run(run())
    assert caplog.text.count("cannot write") == 1
