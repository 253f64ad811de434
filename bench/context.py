"""What every scenario gets: the running stack, the run's size, and earlier baselines."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.hop import Endpoint, run_hop
from bench.stack import Account, BenchStack, CpuMeter
from protocol.topology import VHOST


@dataclass
class Context:
    stack: BenchStack
    quick: bool
    # Figures one scenario measures and a later one compares with (ceiling → direct, ...).
    baselines: dict[str, float] = field(default_factory=dict)
    _people: list[Account] = field(default_factory=list)

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def endpoint(self) -> Endpoint:
        """The internal `bench` user, for the plain-pika baselines."""
        node = self.stack.node
        return Endpoint(node.host, node.amqp_port, VHOST, "bench", self.stack.bench_password)

    def people(self, count: int) -> list[Account]:
        """`count` signed-up, logged-in users, shared by the scenarios (inboxes left empty)."""
        self.stack.ensure_auth()
        missing = count - len(self._people)
        if missing > 0:
            self._people += self.stack.accounts(missing, prefix="p")
        return self._people[:count]

    def ceiling_probe(self) -> tuple[float, dict[str, float]]:
        """A short windowed ceiling run right now, as the baseline of a run next to it (so
        that both see the same load from whatever else this machine is doing): its rate,
        and its CPU microseconds per message (broker, clients)."""
        with CpuMeter(self.stack) as cpu:
            hop = run_hop(self.endpoint(), self.size(3_000, 10_000), window=500)
        return hop.published / hop.total_seconds, cpu.per_message_us(hop.published)
