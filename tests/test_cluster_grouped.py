"""Group commit (headwater._cluster._grouped): callers at the same time share one write, each gets its own."""

from __future__ import annotations

import threading

from waiting import wait_until

from headwater._cluster._grouped import Grouped

Item = tuple[str, int]


class Gate:
    """A write function that holds its first call until released, recording every group it writes."""

    def __init__(self) -> None:
        self.groups: list[list[Item]] = []
        self.first_in = threading.Event()
        self.release = threading.Event()

    def write(self, items: list[Item]) -> list[int]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.first_in.set()
            assert self.release.wait(10)
        if any(value < 0 for _, value in items):
            raise ValueError("negative")
        return [value * 10 for _, value in items]


def callers(
    grouped: Grouped[Item, int], batches: dict[str, list[Item]]
) -> tuple[list[threading.Thread], dict]:
    out: dict[str, object] = {}

    def run(name: str, items: list[Item]) -> None:
        try:
            out[name] = grouped.call(items)
        except ValueError as exc:
            out[name] = exc

    threads = [threading.Thread(target=run, args=(name, items)) for name, items in batches.items()]
    return threads, out


def gathered(grouped: Grouped[Item, int], count: int) -> None:
    wait_until(
        lambda: grouped.waiting() >= count,
        10,
        lambda: f"only {grouped.waiting()} of {count} callers waiting",
        step=0.001,
    )


def test_callers_waiting_meanwhile_are_written_in_one_group_each_with_its_own_answers() -> None:
    gate = Gate()
    grouped: Grouped[Item, int] = Grouped(gate.write, key=lambda item: item[0])
    (first,), out = callers(grouped, {"first": [("a", 1)]})
    first.start()
    assert gate.first_in.wait(10)  # the first group is being written: the others gather meanwhile
    second, more = callers(grouped, {"bc": [("b", 2), ("c", 3)], "d": [("d", 4)]})
    for thread in second:
        thread.start()
    gathered(grouped, 2)
    (third,), last = callers(grouped, {"b again": [("b", 5)]})  # a key already in the group: the next one
    third.start()
    gathered(grouped, 3)
    gate.release.set()
    for thread in [first, *second, third]:
        thread.join(10)
    assert {**out, **more, **last} == {"first": [10], "bc": [20, 30], "d": [40], "b again": [50]}
    assert gate.groups == [[("a", 1)], [("b", 2), ("c", 3), ("d", 4)], [("b", 5)]]


def test_a_failed_write_raises_in_every_caller_of_its_group_and_no_other() -> None:
    gate = Gate()
    grouped: Grouped[Item, int] = Grouped(gate.write, key=lambda item: item[0])
    (first,), out = callers(grouped, {"first": [("a", 1)]})
    first.start()
    assert gate.first_in.wait(10)
    bad, failed = callers(grouped, {"x": [("x", -1)], "y": [("y", 2)]})
    for thread in bad:
        thread.start()
    gathered(grouped, 2)
    gate.release.set()
    for thread in [first, *bad]:
        thread.join(10)
    assert out == {"first": [10]}
    assert isinstance(failed["x"], ValueError) and isinstance(failed["y"], ValueError)
    assert grouped.call([("z", 3)]) == [30]  # and it goes on


def test_many_threads_at_once_each_get_their_own_answers() -> None:
    grouped: Grouped[Item, int] = Grouped(lambda items: [v * 10 for _, v in items], key=lambda item: item[0])
    barrier = threading.Barrier(16)
    done: list[int] = []

    def one(n: int) -> None:
        barrier.wait()
        for round_ in range(50):
            assert grouped.call([(f"{n}-{round_}", n), ("shared", n)]) == [n * 10, n * 10]
        done.append(n)

    workers = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(30)
    assert sorted(done) == list(range(16))
