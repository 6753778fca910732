"""
Action C{send_tcp}: send data to a TCP/IP port (the outbound printer client).

The job goes through the shared destination pool (L{rawsvc.client.destinations}),
one connection at a time per destination; a printer that is busy, off or
unreachable is retried with back-off until it takes the job or C{retry_for}
runs out (L{rawsvc.client.retry}).
By default the payload is sent untouched (streamed from its spool file when
large); C{data} sends a template instead.  The back-channel reply lands in
the C{save_reply} variable, even when the action fails.  Destinations are
checked against C{[service] allowed_destinations}, each entry of a pool too.

C{preflight} asks the printer's status before each attempt
(L{rawsvc.client.preflight}); a printer that is not ready holds the job
(C{held}) until a later check finds it ready.  A list of destinations is a
printer pool (L{rawsvc.client.pools}).  A delivered job's C{printed_on}
variable is the C{host:port} of the printer that took it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.client.address import AddressError, Destination
from rawsvc.client.destinations import CANCELLED, STOPPED, DeliveryResult, DestinationPool, pool_for
from rawsvc.client.pools import COOLDOWN, POLICIES, PrinterPool
from rawsvc.client.preflight import KINDS
from rawsvc.client.protocol import SendSettings, Source
from rawsvc.client.retry import RETRY_FOR, RetryPolicy
from rawsvc.errors import ActionError, ConfigIssue, Interrupted
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext


def _retries(value: int) -> int:
    if value < 0:
        raise ConfigIssue(f"must be 0 or more, not {value!r}")
    return value


#: Printer pools an action keeps (templated pools may name many).
MAX_POOLS = 64


def _destinations(value: str | list) -> list[Template]:
    """A C{destination}: one C{host:port} template, or a list of them (a printer pool)."""
    if isinstance(value, str):
        return [Template(value)]
    if not value:
        raise ConfigIssue("a list of printers needs at least one entry")
    return [Template(item) for item in o.string_list(value)]


def _save_reply(value: str) -> str:
    return o.variable_name(value) if value else value


@provider(IActionType)
@implementer(IAction)
class SendTcpAction:
    """Send a job to C{host:port} and keep what the printer answers."""

    type_name = "send_tcp"
    options = o.Schema(
        o.Option("destination", (str, list), check=_destinations,
                 doc="`\"host:port\"` template; IPv6 as `\"[::1]:9100\"`; checked at config time when literal; "
                 "a list of them is a printer pool (see `policy`)"),
        o.Option("policy", str, "failover", o.one_of(*POLICIES),
                 doc="which printer of a pool a job goes to: `failover` (the first healthy, in order), "
                 "`round_robin` or `least_queued`"),
        o.Option("cooldown", (int, float), COOLDOWN, o.non_negative,
                 doc="seconds a pool's printer that refused, timed out or failed pre-flight is skipped"),
        o.Option("preflight", str, "off", o.one_of(*KINDS),
                 doc="ask the printer's status before each attempt: `zpl` (`~HS`), `pjl` (`@PJL INFO STATUS`) "
                 "or `off`; a printer that is not ready holds the job (`held`)"),
        o.Option("preflight_timeout", (int, float), 10.0, o.positive,
                 doc="seconds the printer has to answer the pre-flight query (no answer: the job is held)"),
        o.Option("data", str, "", o.optional_template, doc="template to send instead",
                 shown_default="the payload, untouched"),
        o.Option("encoding", str, "auto", o.encoding, doc="encoding of the rendered data"),
        o.Option("connect_timeout", (int, float), 10.0, o.positive, doc="seconds to wait for the connection"),
        o.Option("disconnect_delay", (int, float), 0.0, o.non_negative,
                 doc="seconds to keep reading the back-channel after every byte is written, then close"),
        o.Option("save_reply", str, "", _save_reply, shown_default="—",
                 doc="variable that receives the back-channel reply (set even when the action fails)"),
        o.Option("reply_encoding", str, "utf-8", o.encoding, doc="how the reply is decoded (invalid bytes replaced)"),
        o.Option("wait_for_eof", bool, False, doc="wait until the printer closes (AppSocket: the job is done)"),
        o.Option("eof_timeout", (int, float), 30.0, o.positive, doc="seconds `wait_for_eof` waits; past it the action fails with \"reply timeout\""),
        o.Option("send_timeout", (int, float), 300.0, o.non_negative,
                 doc="seconds the printer may take no data before the attempt fails (0: never)"),
        o.Option("half_close", bool, True, doc="shut down the write side once every byte is written"),
        o.Option("retries", int, None, _retries,
                 doc="at most this many retries (set: it caps as well as `retry_for`; `0`: never retry)",
                 shown_default="no cap"),
        o.Option("retry_for", (int, float), RETRY_FOR, o.non_negative,
                 doc="seconds after the first attempt a delivery is retried for (7 days, like CUPS; `0`: never retry)"),
        o.Option("retry_delay", (int, float), 1.0, o.positive, doc="first back-off in seconds, doubled each retry (plus up to a quarter of it in jitter)"),
        o.Option("max_retry_delay", (int, float), 30.0, o.positive, doc="longest back-off"),
    )

    def __init__(
        self,
        destination: Template | list[Template],
        pool: DestinationPool,
        settings: SendSettings,
        data: Template | None = None,
        encoding: str = "auto",
        save_reply: str = "",
        reply_encoding: str = "utf-8",
        policy: RetryPolicy | None = None,
        pool_policy: str = "failover",
        cooldown: float = COOLDOWN,
    ) -> None:
        #: The printers: one template, or several (a pool).
        self.destinations = destination if isinstance(destination, list) else [destination]
        self.destination = self.destinations[0]
        self.pool_policy = pool_policy
        self.cooldown = cooldown
        #: Pools by their printers, kept so that round_robin goes round (at most MAX_POOLS).
        self._pools: dict[tuple[str, ...], PrinterPool] = {}
        self.policy = policy or RetryPolicy(settings.retry_delay, settings.max_retry_delay)
        self.pool = pool
        self.settings = settings
        self.data = data
        self.encoding = encoding
        self.save_reply = save_reply
        self.reply_encoding = reply_encoding

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "SendTcpAction":
        if options["retry_delay"] > options["max_retry_delay"]:
            raise ConfigIssue(
                f"{options['retry_delay']:g} s is longer than max_retry_delay ({options['max_retry_delay']:g} s)",
                "retry_delay",
            )
        if context.cluster_options is not None and len(options["destination"]) > 1:
            raise ConfigIssue(
                "a pool of several printers is not shared across a cluster: each node would choose and "
                "connect on its own, breaking one connection per printer; give send_tcp one destination "
                "with [cluster]", "destination",
            )
        pool = pool_for(context)
        for destination in options["destination"]:
            if destination.names:
                continue
            try:
                literal = Destination.parse(destination.render_text({}))
            except AddressError as e:
                raise ConfigIssue(str(e), "destination") from None
            if pool.explicit and not pool.allow.may_allow(literal):
                raise ConfigIssue(
                    f"{literal} is not in [service] allowed_destinations", "destination"
                )
            pool.add_literal(literal)
        settings = SendSettings(
            connect_timeout=float(options["connect_timeout"]),
            disconnect_delay=float(options["disconnect_delay"]),
            wait_for_eof=options["wait_for_eof"],
            eof_timeout=float(options["eof_timeout"]),
            send_timeout=float(options["send_timeout"]),
            half_close=options["half_close"],
            retries=options["retries"] if options["retries"] is not None else 0,
            retry_delay=float(options["retry_delay"]),
            max_retry_delay=float(options["max_retry_delay"]),
            preflight=options["preflight"],
            preflight_timeout=float(options["preflight_timeout"]),
        )
        policy = RetryPolicy(
            settings.retry_delay, settings.max_retry_delay, float(options["retry_for"]), options["retries"],
        )
        return cls(
            options["destination"],
            pool,
            settings,
            options["data"],
            options["encoding"],
            options["save_reply"],
            options["reply_encoding"],
            policy,
            options["policy"],
            float(options["cooldown"]),
        )

    def _printers(self, variables: dict[str, str]) -> list[Destination]:
        dests = []
        for template in self.destinations:
            try:
                dests.append(Destination.parse(template.render_text(variables)))
            except AddressError as e:
                raise ActionError(f"bad destination: {e}") from None
        return dests

    def run(self, job: Any) -> Deferred[DeliveryResult]:
        dests = self._printers(job.variables)
        total: int | None
        source: Source
        if self.data is not None:
            source = self.data.render(job.variables, self.encoding)
            total = len(source)
        elif job.payload.in_memory:
            payload_bytes: bytes = job.payload.bytes()
            source, total = payload_bytes, len(payload_bytes)
        else:
            source = job.payload.open
            total = job.payload.size
        if len(dests) == 1:
            # The cluster key of this delivery: the run, and the action's index (an on_error action's
            # apart from the failed action's, whose index the variable still holds).
            index = int(job.variables.get("action_index") or 0) if job.on_error_index is None else -1 - job.on_error_index
            d = self.pool.deliver(dests[0], source, self.settings, job.job_id, total, self.policy,
                                  action_index=index, run=job.run)
        else:
            key = tuple(str(m) for m in dests)
            printers = self._pools.get(key)
            if printers is None:
                if len(self._pools) >= MAX_POOLS:
                    self._pools.clear()
                printers = self._pools[key] = PrinterPool(dests, self.pool_policy, self.cooldown)
            d = self.pool.deliver_pool(printers, source, self.settings, job.job_id, total, self.policy)
        return d.addCallback(self._finished, job)

    def _finished(self, result: DeliveryResult, job: Any) -> DeliveryResult:
        if self.save_reply:
            codec = "utf-8" if self.reply_encoding == "auto" else self.reply_encoding
            job.variables[self.save_reply] = result.reply.decode(codec, "replace")
        if result.ok:
            job.variables["printed_on"] = result.destination
        if result.outcome == STOPPED:
            raise Interrupted(result.message)
        if result.outcome == CANCELLED:
            raise ActionError("cancelled by an operator")
        if not result.ok:
            raise ActionError(result.message)
        return result
