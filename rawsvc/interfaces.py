"""
Every seam of rawsvc, as zope.interface interfaces.

Plugins implement these; the service talks to its parts only through
them, and the tests check every built part with C{verifyObject}.  A part
that does more than its interface asks declares each extra capability as
an interface of its own (L{IJobHistory}, L{IJobControl}, L{IDrainable},
...), and the service asks for it with C{IThing.providedBy(part)}.

What the service hands a part is passed in: a trigger gets its job sink
from the L{rawsvc.context.BuildContext} it is built with (C{context.sink});
an action that delivers gets the destination pool the same way
(C{context.destinations}).  Nothing looks the service up at run time.

The job records these interfaces pass around are L{rawsvc.job.Job}
(a job in memory: C{job_id}, C{trigger}, C{payload}, C{variables},
C{state}, C{error} ...); a job's C{state} is a L{rawsvc.states.JobState}.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface


# Actions ------------------------------------------------------------------


class IAction(Interface):
    """
    One step of a flow: takes a job, returns a Deferred (or a plain value).
    """

    type_name = Attribute("The action's type, as written in the config (a str).")

    def run(job):
        """
        Do the work for C{job} (a L{rawsvc.job.Job}).

        May read and set variables in C{job.variables} (a mapping of str to
        str; set values are strings).  Returns a Deferred or a plain value;
        the value is ignored.  To fail the job cleanly, raise (or fail the
        Deferred with) L{rawsvc.errors.ActionError} whose message is for
        people: the job ends C{failed} with that message as C{${error}} and
        the flow's C{on_error} actions run.  Any other exception fails the
        job the same way but is also logged as a crash, with a traceback.
        Raise L{rawsvc.errors.Interrupted} when the service is stopping
        under you: the job is left unfinished and resumes at the next start.
        """


class IActionType(Interface):
    """
    Provided by an action class (or any factory): how the config builds it.
    """

    type_name = Attribute("The type name used in the config.")
    options = Attribute(
        "A L{rawsvc.options.Schema} describing the accepted keys (besides 'type')."
    )

    def from_config(options, context):
        """
        Build an L{IAction} from validated C{options} (a dict holding every
        key of C{options}, defaults filled in) and a
        L{rawsvc.context.BuildContext}.  Raise L{rawsvc.errors.ConfigIssue}
        for a value the schema could not check; the config loader reports
        it with the file, table and key.
        """


# Triggers -----------------------------------------------------------------


class ITriggerType(Interface):
    """
    Provided by a trigger class: how the config builds a trigger.
    """

    type_name = Attribute("The type name used in the config.")
    options = Attribute("A L{rawsvc.options.Schema} of the trigger's keys.")

    def from_config(options, context):
        """
        Build an L{ITrigger} from validated C{options} and a
        L{rawsvc.context.BuildContext}; the trigger hands its jobs to
        C{context.sink} (an L{IJobSink}).  Raise
        L{rawsvc.errors.ConfigIssue} for a value the schema could not check.
        """


class ITrigger(IService):
    """
    A listener that turns incoming connections or datagrams into jobs.

    A trigger is an C{IService}: the service tree starts it (it opens its
    listener) and stops it (it closes its listener and tells its open
    connections the service is stopping).  For each job it builds a
    L{rawsvc.job.Job} and calls C{sink.submit(job, flow, counters)}.
    """

    name = Attribute("The trigger's name from the config (a str).")
    type_name = Attribute("Its type, as written in the config (a str).")
    flow = Attribute("The name of the flow its jobs run (a str; may be '' for a trigger that makes no jobs).")
    counters = Attribute("A L{rawsvc.metrics.TriggerCounters}, updated by the trigger and its sink.")
    listening = Attribute("True while the listener is up.")

    def pause():
        """Stop accepting new connections or jobs; returns a Deferred (or None)."""

    def resume():
        """Accept again after L{pause}; returns a Deferred (or None)."""

    def status():
        """A JSON-able dict: at least C{name}, C{type}, C{listening}, C{paused} and C{counters}."""

    def connection_list():
        """A JSON-able dict per open connection (C{peer} at least); [] for a trigger without connections."""

    def receiving():
        """
        How many connections are in the middle of sending a job now.  After
        the trigger was stopped the service waits (up to C{stop_grace}) for
        this to reach 0, so a job a client is still sending is stored.
        """

    def abort_receiving():
        """Reset the connections still sending a job (the stop grace is over); returns how many."""


class IRecoveryAware(Interface):
    """
    Optional, for a trigger: told when a job of its own that had failed was
    run again by an operator (retry) and ended done (a printer clears its
    error state).
    """

    def job_recovered(job):
        """C{job} (a L{rawsvc.job.Job}) was retried and is now done."""


class IPrinterStatus(Interface):
    """
    What a virtual printer tells about itself, as a frozen record: the
    UDP status responder (and the admin side) read it without touching the
    printer's internals.
    """

    name = Attribute("The printer trigger's name.")

    def snapshot():
        """A L{rawsvc.triggers.printer_state.PrinterSnapshot}: the printer's state now."""


class IReplyChannel(Interface):
    """
    The way back to a job's sender, while it can still be answered.
    """

    def reply(data):
        """
        Queue C{data} (bytes) for the sender, in job order.  Returns a
        Deferred that fires once handed to the transport, or fails with
        L{rawsvc.errors.ActionError} when the sender has gone.
        """


# Job sinks ----------------------------------------------------------------


class IJobSink(Interface):
    """
    Where triggers hand their jobs: runs the job's flow (and, with a spool,
    stores the job durably first).
    """

    def submit(job, flow_name, counters=None):
        """
        Accept C{job} (a L{rawsvc.job.Job}) for the flow named C{flow_name}.

        C{counters} is the submitting trigger's
        L{rawsvc.metrics.TriggerCounters} (or None): the sink counts the job
        as received, then done, failed or refused there.

        Returns a Deferred firing with the finished job; it does not fail
        for a failing flow.  The job's C{state} is then C{done} or
        C{failed} (C{job.error} says why), C{interrupted} when the service
        stopped under it (it resumes at the next start), or C{refused}
        (with C{job.error} saying why) when the sink could not take it (a
        durable spool that cannot store it): the flow did not run and the
        trigger tells the sender.  A sink that stores jobs fires the
        Deferred only after the flow ran, but the job is on disk before any
        action of its flow runs, so a C{reply} is an acknowledgement.
        """


class IJobHistory(Interface):
    """Optional, for a sink: the jobs it runs now and the last finished ones."""

    def recent(limit=50):
        """Up to C{limit} L{rawsvc.job.Job}s: the running ones first, then the newest finished."""

    def waiting_deliveries():
        """
        A dict C{job_id -> {"destination", "attempt", "last_error",
        "next_try"}} of the running jobs whose delivery waits to retry.
        """


class IJobControl(Interface):
    """Optional, for a sink: an operator acts on one job."""

    def retry(job_id):
        """
        Run a failed, cancelled or waiting job again (a waiting delivery
        tries now).  Returns a Deferred firing with a message for people
        (also when there is nothing to do: "job X is running"), or failing
        with C{KeyError} when the sink knows no such job.
        """

    def cancel(job_id):
        """
        End a queued, running or waiting job as cancelled (a running
        action completes first; a delivery waiting to retry or for its turn
        ends now).  Returns a Deferred firing with a message for people, or
        failing with C{KeyError} when the sink knows no such job.
        """


class IDrainable(Interface):
    """Optional, for a sink: how the service's stop lets jobs finish."""

    def begin_stop():
        """
        The service is stopping: what fails from now on is interrupted,
        not failed (it resumes at the next start).
        """

    def drain():
        """A Deferred firing once every job in flight has finished (it never fails)."""

    def in_flight():
        """How many jobs are in flight now."""


class IHealth(Interface):
    """Optional, for a sink (or any part): whether it can take jobs now."""

    def health():
        """C{None} while healthy, else a sentence for people saying why not (C{/healthz} answers 503)."""


class IDeliveryWatcher(Interface):
    """
    Told by the destination pool when a running job's delivery starts to
    wait for a retry, and when it tries again (the sink shows the job as
    C{waiting} meanwhile).
    """

    def delivery_waiting(job_id, destination, attempt, error, next_try):
        """Job C{job_id}'s delivery to C{destination} failed attempt C{attempt} with C{error}; next at C{next_try} (epoch s)."""

    def delivery_retrying(job_id, destination, attempt):
        """Job C{job_id}'s delivery makes attempt C{attempt} now."""


class IDestinationPool(Interface):
    """
    The outbound side shared by every C{send_tcp} action: one queue and
    (at most) one connection per destination.  It is an C{IService}.
    """

    def status():
        """A JSON-able list of dicts, one per destination: C{destination}, C{state}, C{queued} ..."""

    def retry_now(job_id):
        """Make the next attempt of C{job_id}, waiting for a retry, now; False when it is not waiting."""

    def cancel(job_id):
        """End C{job_id}'s delivery now when it waits for a retry or for its turn; False when it has none."""

    def begin_stop():
        """The stop grace begins: end every back-off wait now and retry nothing more."""

    def add_watcher(watcher):
        """Tell C{watcher} (an L{IDeliveryWatcher}) about waiting and retrying deliveries."""


# --- proto: the protocol plugin API (sans-IO framers, connection policies) ---
#
# A stream trigger is a framer (bytes in, events out, no I/O) run by one
# connection class, L{rawsvc.triggers.connection.FramedConnection}, which
# gives every trigger the same limits, timeouts, reply order, back-pressure,
# refusals and job sink.  The events are the classes in
# L{rawsvc.triggers.framing}; L{rawsvc.triggers.api} is the public entry.


class IFramer(Interface):
    """
    Splits one connection's byte stream into jobs, without I/O.

    One framer is made per connection.  The connection calls L{feed} with
    each chunk the client sent (TCP splits a stream anywhere: a framer must
    give the same events for any split of the same bytes), and
    L{end_of_input} once, when the client stopped sending.  Both return a
    list of events from L{rawsvc.triggers.framing}, handled in order:

      - C{Data(bytes)}: bytes of the job being received.  A job begins with
        the first C{Data} after the previous C{End} or C{Drop}.  Pass bytes
        on as soon as they are known to belong to the job (hold back only
        what may begin a marker), so a large job streams to its spool file.
      - C{End(meta, ack=b"", nak=b"")}: the job ends here.  C{meta} (a dict
        of str to str) is what the framer learnt about it (a PJL job name, a
        frame number); it lands on the job as C{job.meta} and as variables.
        C{ack} is written to the sender, in this job's place in the reply
        order, once its flow has ended C{done} (so an acknowledgement means
        stored and processed); C{nak} instead when the job failed or was
        refused.  An C{End} with no C{Data} before it is an empty message
        (a job only with C{skip_empty = false}).
      - C{Drop(reason)}: the bytes since the last C{End} make no job (a
        bad check byte, a status poll): they are thrown away, and
        C{reason}, if not empty, is logged.
      - C{Reply(bytes)}: bytes for the sender (a NAK, an answer to a
        greeting), written in reply order: after the replies of the jobs
        that ended before this point.
      - C{Query(value)}: a question only the trigger can answer (a status
        query): handed to the connection's policy
        (L{IConnectionPolicy.query}), whose answer is written at once.
    """

    def feed(data):
        """Take the next chunk (non-empty bytes); return the events it completes."""

    def end_of_input(how):
        """
        The client sent its last byte; C{how} is C{"half-close"} (it shut
        down its sending side and still reads), C{"close"} or C{"lost
        (<why>)"} (a reset).  Return the last events: C{Data} for any bytes
        held back, then C{End} when the end of input ends the job (a
        disconnect-framed stream), C{Drop} when what is left makes no job,
        or neither: the job is then unterminated, and the trigger's
        C{partial} option processes or discards it.  A job cut off by a
        reset is discarded whatever is returned when C{on_reset =
        "discard"}.
        """


class IAnnouncingFramer(IFramer):
    """
    A framer whose jobs may begin with bytes that make no job on their own
    (a printer's PJL header, which a status poll also sends): it sends
    C{Start(meta)} where the real job begins, and only then does the
    connection count the job as arriving (L{IConnectionPolicy.job_began},
    eviction resets).  For any other framer a job begins with its first
    byte.
    """


class IConnectionPolicy(Interface):
    """
    What a trigger adds to its connections, through a few hooks (every
    one optional: L{rawsvc.triggers.policy.ConnectionPolicy} does nothing in
    each).  One policy is made per connection (its C{conn} attribute); it
    acts through the connection's public methods: C{hold}, C{serve},
    C{refuse_at_accept}, C{evict}, C{write}, and reads C{label},
    C{last_active}, C{between_jobs}, C{closed}.
    """

    conn = Attribute("The L{rawsvc.triggers.connection.FramedConnection} this policy serves.")

    def accepted():
        """The client was accepted and counted: serve it (do nothing), C{hold()} it or C{refuse_at_accept(why)}."""

    def query(value):
        """Answer a framer's C{Query}: the bytes to write now, or None."""

    def job_began(meta):
        """A job began to arrive (C{Start}, or its first byte); C{meta} is what the framer knows so far."""

    def job_abandoned():
        """The job that began was dropped before it reached the sink (refused, cut off, timed out)."""

    def job_submitted(job):
        """C{job} (its variables and C{meta} set) goes to the sink now."""

    def job_finished(job):
        """C{job}'s flow ended (C{job.state} says how); its replies are written."""

    def done():
        """The connection has closed and every job of it has finished (called once)."""
