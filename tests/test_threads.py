"""engine.base.device.ThreadAdapter: a CPU train re-picks its thread count from the cores it actually gets.

The clocks are the adapter's hooks: each test plays a machine (how much CPU time the run gets per second
of wall time, and how fast it iterates with each thread count) instead of loading this one."""

import torch

from engine.base import device
from engine.base.device import ADAPT_WINDOW_S, PROBE_BACKOFF, PROBE_EVERY_S, ThreadAdapter


class Machine:
    """A run on `cores` cores of which it gets `share` (cores' worth of CPU time per wall second), doing
    speed[threads] iterations per second; `adapter.step()` is one iteration."""

    def __init__(self, share: float, speed: dict[int, float], cores: int, threads: int):
        self.share, self.speed, self.wall, self.cpu = share, speed, 0.0, 0.0
        self.counts, self.times = [], []  # each thread count the adapter set, and when
        self.adapter = ThreadAdapter(cores, threads, self.set_threads, clock=lambda: self.wall,
                                     cpu_clock=lambda: self.cpu)

    def set_threads(self, threads: int) -> None:
        self.counts.append(threads)
        self.times.append(self.wall)

    def run(self, seconds: float) -> None:
        end = self.wall + seconds
        while self.wall < end:
            threads = self.adapter.threads
            step = 1.0 / self.speed[threads]
            self.wall += step
            self.cpu += step * min(self.share, threads)
            self.adapter.step()


def test_a_train_beside_a_busy_program_drops_to_the_cores_it_gets():
    # 2 threads on 2 cores, but another session takes one: the run gets one core, and its two threads
    # waiting on each other make it crawl
    machine = Machine(share=1.0, speed={1: 8.0, 2: 0.8}, cores=2, threads=2)
    machine.run(ADAPT_WINDOW_S + 2)
    assert machine.counts == [1] and machine.adapter.threads == 1


def test_one_more_thread_is_tried_now_and_then_and_dropped_when_it_does_not_pay():
    machine = Machine(share=1.0, speed={1: 8.0, 2: 0.8}, cores=2, threads=1)
    machine.run(PROBE_EVERY_S + 3 * ADAPT_WINDOW_S)
    assert machine.counts[:2] == [2, 1]  # tried, and back
    assert machine.adapter.threads == 1


def test_each_probe_that_does_not_pay_waits_twice_as_long_for_the_next():
    machine = Machine(share=1.0, speed={1: 8.0, 2: 0.8}, cores=2, threads=1)
    machine.run(PROBE_EVERY_S * (1 + 2 + 4 + PROBE_BACKOFF + PROBE_BACKOFF) + 10 * ADAPT_WINDOW_S)
    probes = [when for when, threads in zip(machine.times, machine.counts, strict=True) if threads == 2]
    gaps = [later - earlier for earlier, later in zip(probes, probes[1:], strict=False)]
    waits = [PROBE_EVERY_S * factor for factor in (2, 4, PROBE_BACKOFF, PROBE_BACKOFF)]
    assert len(gaps) == len(waits) and all(wait <= gap < wait + 3 * ADAPT_WINDOW_S for gap, wait in zip(gaps, waits, strict=True))


def test_freed_cores_are_taken_back():
    # the other program has ended: the run gets all it asks for, and a second thread is faster
    machine = Machine(share=2.0, speed={1: 8.0, 2: 14.0}, cores=2, threads=1)
    machine.run(PROBE_EVERY_S + 3 * ADAPT_WINDOW_S)
    assert machine.counts == [2] and machine.adapter.threads == 2


def test_a_run_that_gets_its_cores_keeps_its_count():
    machine = Machine(share=2.0, speed={1: 8.0, 2: 14.0}, cores=2, threads=2)
    machine.run(3 * PROBE_EVERY_S)
    assert machine.counts == []


def test_only_the_add_ons_cpu_runs_adapt(monkeypatch, tmp_path):
    """The command line keeps a fixed count (a run repeats bit for bit), as does a run whose thread count
    was set outright or that runs on a GPU."""
    monkeypatch.delenv(device.RUNTIME_ENV, raising=False)
    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    assert device.thread_adapter(torch.device("cpu"), 1) is None
    monkeypatch.setenv(device.RUNTIME_ENV, str(tmp_path / "runs"))
    assert isinstance(device.thread_adapter(torch.device("cpu"), 1), ThreadAdapter)
    assert device.thread_adapter(torch.device("cuda"), 1) is None
    assert device.thread_adapter(torch.device("cpu"), 2) is None
    monkeypatch.setenv(device.THREADS_ENV, "2")
    assert device.thread_adapter(torch.device("cpu"), 1) is None
