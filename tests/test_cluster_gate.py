"""Holding a source still in one cluster process: SourceGate's writes and freezes exclude each other."""

from __future__ import annotations

import threading

from headwater._cluster._gate import SourceGate

WAIT = 10.0  # a bound for a hang, not a timing claim


def test_a_freeze_holds_back_writes_of_its_source_only_until_it_ends() -> None:
    gate = SourceGate()
    wrote: list[str] = []

    def write(source: str) -> None:
        with gate.writing(source):
            wrote.append(source)

    with gate.frozen("a"):
        held = threading.Thread(target=write, args=("a",))
        held.start()
        write("b")  # another source goes on
        write("a")  # the freezing thread's own writes go through
        held.join(0.2)
        assert held.is_alive() and wrote == ["b", "a"]  # the other thread's write of "a" waits
        with gate.frozen("a"):  # nested in the same thread
            assert gate.is_frozen("a")
        assert gate.is_frozen("a")
    held.join(WAIT)
    assert not held.is_alive() and wrote == ["b", "a", "a"]
    assert not gate.is_frozen("a")


def test_a_freeze_waits_for_the_writes_already_in() -> None:
    gate = SourceGate()
    inside, leave, frozen = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def long_write() -> None:
        with gate.writing("a"):
            inside.set()
            leave.wait(WAIT)
            order.append("write")

    def freeze() -> None:
        with gate.frozen("a"):
            frozen.set()
            order.append("frozen")

    writer = threading.Thread(target=long_write)
    writer.start()
    assert inside.wait(WAIT)
    freezer = threading.Thread(target=freeze)
    freezer.start()
    assert not frozen.wait(0.2)  # were it not held back, 0.2 s would be plenty on any machine
    leave.set()
    writer.join(WAIT)
    freezer.join(WAIT)
    assert order == ["write", "frozen"]
