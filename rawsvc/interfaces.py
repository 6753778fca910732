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


class IDeliveryReport(Interface):
    """
    Optional, for what an action's C{run} returns (fires with): it
    delivered the job somewhere.  The spool records the destination and
    the byte count with the job (C{rawsvc jobs}, C{/jobs}).
    """

    destination = Attribute("Where the job went, e.g. C{'10.0.0.5:9100'} (a str).")
    written = Attribute("How many bytes were delivered (an int).")


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


class IReferencingTriggerType(ITriggerType):
    """
    A trigger type whose triggers name other triggers (a status responder
    names its printer): the loader builds them after every other trigger,
    so C{from_config} finds the ones it names, built, in C{context.triggers}.
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


class IOutboundLink(Interface):
    """
    Optional, for a trigger that connects out (C{tcp-client}): its link's
    state for status pages and metrics.
    """

    def link_status():
        """
        A JSON-able dict: C{link} (C{connecting}, C{connected},
        C{backing_off} or C{stopped}), C{connects}, C{reconnects},
        C{connect_failures}, C{links_lost}, C{last_error}.
        """


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

        The job arrives in state C{received}; the sink moves it along
        L{rawsvc.states.TRANSITIONS} (C{queued}, then C{running} as its
        flow starts, then a final state); any other move raises under
        C{RAWSVC_STRICT_STATES=1}, as in rawsvc's own tests.

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

    def health(now=None):
        """
        C{None} while healthy, else a sentence for people saying why not
        (C{/healthz} answers 503).  C{now} (epoch seconds; default: the
        time now) is for a part whose health depends on recent events.
        """


class IDeliveryWatcher(Interface):
    """
    Told by the destination pool (L{rawsvc.client.destinations.DestinationPool})
    when a job's delivery waits to retry and when it tries again; the job sink
    shows such a job as C{waiting}.  Errors raised here are logged, never
    passed on to the delivery.
    """

    def delivery_waiting(job_id, destination, attempt, error, next_try):
        """
        Attempt C{attempt} (1-based) of C{job_id} to C{destination}
        (C{"host:port"}) failed with C{error} (text for people); the next one
        is due at C{next_try} (epoch seconds).
        """

    def delivery_retrying(job_id, destination, attempt):
        """The waiting delivery of C{job_id} makes attempt C{attempt} now."""


class IJobRates(Interface):
    """Optional, for a sink: what the console's charts draw."""

    rates = Attribute(
        "A L{rawsvc.rates.JobRates}: jobs finished per minute (done, failed; in all and per trigger) "
        "and the ack latency of stored jobs, for the last day."
    )


class IDestinationControl(Interface):
    """Optional, for a destination pool: an operator pauses and resumes destinations."""

    def pause(key, who="an operator"):
        """
        Start no attempt to C{key} (C{"host:port"}) until L{resume}; its
        queued deliveries wait, nothing is dropped.  False when paused
        already; C{AddressError} when C{key} is no destination or not allowed.
        """

    def resume(key):
        """Let deliveries to C{key} go on; False when it was not paused."""

    def named():
        """The destinations the config names literally (a list of C{"host:port"})."""


class IDestinationPool(Interface):
    """
    The outbound side shared by every C{send_tcp} action: one queue and
    (at most) one connection per destination.  It is an C{IService}.
    """

    def status():
        """
        A JSON-able dict keyed by destination (C{"host:port"}), each value a
        dict with at least C{state}, C{queued}, C{attempts}, C{delivered},
        C{failures} and C{retries}.
        """

    def retry_now(job_id):
        """Make the next attempt of C{job_id}, waiting for a retry, now; False when it is not waiting."""

    def cancel(job_id):
        """End C{job_id}'s delivery now when it waits for a retry or for its turn; False when it has none."""

    def begin_stop():
        """The stop grace begins: end every back-off wait now and retry nothing more."""

    def add_watcher(watcher):
        """Tell C{watcher} (an L{IDeliveryWatcher}) about waiting and retrying deliveries."""


# --- store: IJobStore -------------------------------------------------------


class IJobStore(Interface):
    """
    The durable spool behind L{rawsvc.spool.sink.SpoolSink}: a job is
    stored before its sender is acknowledged, its progress and final state
    are recorded, and unfinished jobs come back after a restart.  SQLite
    (L{rawsvc.spool.store.Store}) implements it; any engine that passes
    C{tests/store_contract.py} can take its place.

    B{Calling.}  Every method is called on the reactor thread and must not
    block it: do the I/O on a thread of your own (the SQLite store has one
    writer thread).  Deferreds fire on the reactor thread.  A failure is a
    L{rawsvc.spool.model.SpoolError} whose message is for people (no
    Python reprs), unless the method says otherwise.

    B{Durable and background writes.}
      - A I{durable} write (C{add}, C{requeue}, C{finish} without
        C{background}) fires its Deferred only once it, and every write
        asked for before it, would survive a crash of the process or the
        machine (committed and fsynced).  For C{add} this is the ack: the
        sender is answered only after it fired.
      - A I{background} write (C{progress}, C{started}, C{waiting}, and
        any of them or C{finish} with C{background=True}) returns None at
        once.  It may be lost at a crash (applied, but not fsynced before a
        later durable write or C{stop}); when it fails the store logs why,
        nobody else hears of it.  A background C{finish} that could not be
        written is kept and tried again (at the latest at C{stop}): a job
        whose final state is lost runs again at the next start.
      - Writes take effect in the order they were asked for, both kinds
        mixed, at least for the writes of one job: a C{progress} asked for
        before the job's C{finish} never lands after it.
      - C{flush} fires once every write asked for before it took effect
        (or failed).
      - While the store is not open (before C{open} succeeded; after
        C{stop}) every write and read fails with a C{SpoolError} (a
        background write: logged): after C{stop} it says C{"the spool is
        stopped"}; after a failed C{open}, why (C{error}).

    B{Records.}  Reads fire with L{rawsvc.spool.model.StoredJob}s (build
    them with keywords); each read makes new ones, which the caller may
    change.  Fields: C{seq} (int, arrival order: a job added later has a
    larger one), C{job_id}, C{trigger}, C{flow}, C{state},
    C{peer_host}, C{peer_port} (int), C{encoding}, C{size} (payload bytes),
    C{received_at} (the job's, epoch s), C{action_index} (first action not
    completed), C{attempt} (how often its flow started: 1 once added),
    C{variables}, C{payload} (the bytes) or C{payload_path} (a file of the
    store's holding them; then C{payload} is None), C{queued_at},
    C{started_at}, C{updated_at}, C{finished_at} (epoch s by the store's
    clock; C{finished_at} None while unfinished), C{last_error},
    C{destination} (the latest delivery's), C{bytes_delivered} (the sum of
    every delivery recorded), C{delivery_attempt}, C{next_try}.
    C{variables} are those of the job's latest write (a dict of str to
    str), without C{action_index}, and a store may leave out C{job_id},
    C{trigger}, C{peer_host}, C{peer_port} and C{size} when they equal the
    fields (C{StoredJob.all_variables()} puts them back).  A payload comes
    back exactly: every byte value, any size (also past
    L{rawsvc.spool.records.BLOB_MAX}, where SQLite keeps it in a file).

    B{States} are the strings of L{rawsvc.states.JOB_STATES}.  A stored job
    is unfinished (C{queued}, C{running}, C{waiting}: it is still to run
    and comes back after a restart) or finished (C{done}, C{failed},
    C{cancelled}); L{rawsvc.spool.model} has both tuples.  C{refused} and
    C{interrupted} are never stored: a refused job was never taken, an
    interrupted one stays C{running}.

    B{Time.}  C{received_at} is the job's own; every other time, and the age
    C{purge} measures, is read from the store's clock (an engine takes one
    in its constructor, C{time.time} by default, so tests can move it).

    B{Many nodes.}  A store may be shared by several rawsvc processes (the
    cluster spool on PostgreSQL); each process's store object is then one
    I{node}.  The jobs a node C{add}s, C{requeue}s or adopts (from a node
    that died) are its own to run, and C{load()} of unfinished jobs gives
    only those.  Reads by id or by C{query} see every node's jobs.  Each
    request of the CLI goes to one node: the one that runs its job.  A
    store used by one process owns every job.
    """

    error = Attribute(
        "None while the store can take new jobs, else a sentence for people "
        "saying why not (it could not be opened; its database is damaged or "
        "out of reach).  Meanwhile the sink refuses new jobs with this text and "
        "calls C{open} again every second."
    )

    def open():
        """
        Open the store (or reopen it after a failure or a C{stop}): make or
        migrate what it needs, take what it must hold alone (the SQLite
        store: the state_dir's lock).  Fires with a short text naming where
        the jobs are kept, for the log (a path; a database without its
        password).  Fails with C{SpoolError} saying why, and C{error} is
        then that text; a success clears C{error}.  On a store that is open
        it fires again at once, or fails when the store went bad meanwhile.
        """

    def stop():
        """
        Apply every write asked for so far (background ones included),
        close, and let go of what C{open} took; a shared store's node
        leaves, so its unfinished jobs go to the other nodes.  Fires once
        done; never fails.  C{open} may be called again afterwards.
        """

    def add(job, flow, variables=None):
        """
        Store a new job, durably (see above): the job is C{running} at
        action 0, attempt 1, this node's, and its flow starts as soon as
        this fires.

        C{job} is a L{rawsvc.job.Job}: keep its C{job_id}, C{trigger},
        C{peer_host}, C{peer_port}, C{encoding}, C{received_at},
        C{payload.size}, the flow's name C{flow}, its variables
        (C{variables}, else C{job.variables.snapshot()}) and its payload:
        exactly the bytes of C{job.payload}, C{job.payload.bytes()} while
        C{job.payload.in_memory}, else the file C{job.payload.path} (copy
        or hard-link it; never keep that path: the caller deletes the file).
        Nothing of the job changes until the Deferred fires.

        Fires with None, or with the path of a file of the store's own that
        holds exactly the payload until the job is purged (the caller may
        then drop its copy and read the payload from there).  Fails with
        C{SpoolError} when the job could not be stored: it is then not in
        the store, and nothing of it is left behind; the sink refuses it.
        Job ids are unique: adding one the store holds already fails.
        """

    def progress(job_id, action_index, variables, delivery, background=False):
        """
        The running job C{job_id} completed an action: C{action_index} is
        the next one to run, C{variables} (a dict of str to str) replace
        its stored variables.  C{delivery} is None or C{(destination,
        bytes written)} of a delivery the action made: the record keeps the
        latest destination and adds up the bytes.  The job is C{running}
        (a C{waiting} job's wait is over).  Not durable: returns a Deferred
        that fires once it took effect, or None with C{background}.  A
        finished job, or one the store does not hold, is left alone.
        """

    def started(job_id, action_index, background=False):
        """
        The unfinished job C{job_id} starts its flow again (resumed after a
        restart, or retried) at action C{action_index}: it is C{running},
        C{attempt} is one more, C{started_at} is set if it was not.  Not
        durable; a Deferred, or None with C{background}.  A finished job,
        or one the store does not hold, is left alone.
        """

    def finish(job_id, state, error, action_index, variables, delivery, background=False):
        """
        The job's final state, durably: C{state} is C{done}, C{failed} or
        C{cancelled}; C{error} its text for people (C{last_error}) or None;
        C{action_index} the first action not completed (one past the last
        for a done job); C{variables} and C{delivery} as for C{progress}.
        C{finished_at} is now; C{next_try} is cleared.  It applies to any job
        the store holds, finished or not.  A Deferred that fires once
        durable, or, with C{background}, None (see above: tried again).
        """

    def waiting(job_id, attempt, error, next_try):
        """
        In the background (returns None): the delivery of the running or
        waiting job C{job_id} failed attempt C{attempt} with C{error} (text)
        and waits until C{next_try} (epoch s): state C{waiting}, with
        C{delivery_attempt}, C{last_error} and C{next_try} recorded.  With
        C{next_try} None it makes attempt C{attempt} now: a C{waiting} job
        is C{running} again (C{delivery_attempt} = C{attempt}, C{next_try}
        None).  Any other job is left alone.
        """

    def flush():
        """
        Fires once every write asked for before it took effect or failed;
        at once when the store is not open.  Never fails.
        """

    def requeue(job_id, action_index):
        """
        Retry, durably: the finished job C{job_id} is C{queued} again at
        C{action_index}, C{finished_at} None, this node's; it keeps its
        place in arrival order (C{seq}).  The caller then runs it (and calls
        C{started}).  Does nothing for a job the store does not hold.
        """

    def load(states=("queued", "running", "waiting"), job_id=None):
        """
        Fires with a list of records with their payloads.  With C{job_id}:
        that one job, in any state and whichever node runs it (C{[]} when
        the store does not hold it).  Else the jobs in C{states}, in
        arrival order: by default the unfinished jobs this node is to run
        (what a start resumes; for jobs added through one store, the order
        of the C{add} calls).  Called again while open, it gives them as
        they are now (a shared store: with those adopted since from a node
        that died); the caller skips the ones it runs already.
        """

    def query(states=(), triggers=(), limit=50, prefix=None):
        """
        History, newest first (by C{seq}): fires with a list of records of
        every node's jobs, only in C{states} and only from C{triggers} when
        those are given (empty: any), only those whose C{job_id} starts
        with C{prefix} when given, at most C{limit} (0 or None: all).
        Records carry no payload (C{payload} None; C{payload_path} may be
        set).  A read only: safe while jobs are written.
        """

    def request(job_id, action):
        """
        What C{rawsvc retry}/C{rawsvc cancel} ask of the running service:
        queue a request, C{action} C{"retry"} or C{"cancel"}, for C{job_id}
        (not checked here: the answer says so).  Durable: the request
        survives a restart and is taken then.  Fires with its id (an int).
        """

    def take_requests():
        """
        Fires with the requests not yet answered, oldest first: a list of
        C{(request_id, job_id, action)}.  A request stays until it is
        answered, so one taken and not yet answered may be given again: the
        caller answers each before it takes again.  A shared store gives a
        request to the node that runs its job (any one node when none does).
        """

    def answer(request_id, ok, result):
        """
        Record the answer to a request: C{ok} (a bool) and C{result} (a
        text for people).  It is no longer taken.  Fires once recorded.
        """

    def answer_of(request_id):
        """Fires with None while the request is unanswered (or unknown), else C{(ok, result)}."""

    def purge(max_age, max_bytes):
        """
        Retention: remove the finished jobs (payloads included) that
        finished more than C{max_age} seconds ago; then more, oldest
        finished first, while the sizes of the finished jobs left add up to
        more than C{max_bytes} (int), or while the free space of the store's
        filesystem is below the store's own floor (a constructor setting;
        an engine without a filesystem of its own has none).  Unfinished
        jobs always stay.  Requests answered more than C{max_age} seconds
        ago go too.
        Fires with C{(jobs removed, their bytes)}.
        """
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


# --- p14 (issue 14, the printer side): simulated printer conditions ---------------


class ISimulatedPrinter(Interface):
    """
    A virtual printer that can be put in simulated conditions for testing
    (C{paper_out}, C{head_open}, C{ribbon_out}, C{paused}, C{offline}; see
    L{rawsvc.triggers.printer_conditions}).  Asked with C{providedBy} by the
    admin side.
    """

    def set_condition(condition, on=True):
        """Switch C{condition} on or off; returns the conditions now (text). C{ValueError} for an unknown one."""

    def clear_conditions():
        """Switch every condition off (held jobs then run, in order)."""

    def snapshot():
        """The printer's L{rawsvc.triggers.printer_state.PrinterSnapshot} (its C{conditions} and C{held})."""


# --- p14d: held deliveries (send_tcp's pre-flight status check) -------------


class IHoldWatcher(IDeliveryWatcher):
    """
    Optional, for a delivery watcher: also told when a delivery is C{held}
    (its pre-flight status check found the printer not ready; nothing was
    sent).  The sink shows such a job as C{held} with the reason; when it is
    checked again, C{delivery_retrying} is called as after a wait.  A
    watcher without it is told C{delivery_waiting} instead.
    """

    def delivery_held(job_id, destination, attempt, reason, next_try):
        """
        The pre-flight check of attempt C{attempt} of C{job_id} to
        C{destination} found the printer not ready (C{reason}, text for
        people: "paper out, head open"); the next check is due at
        C{next_try} (epoch seconds).
        """


class IHoldStore(Interface):
    """
    Optional, for an L{IJobStore}: it keeps held jobs as C{held} (unfinished,
    like C{waiting}: L{IJobStore.load} gives them back by default).  A store
    without it is told C{waiting} with the error C{"held: REASON"}.
    """

    def held(job_id, attempt, reason, next_try):
        """
        The unfinished job C{job_id} is C{held}: its printer said C{reason};
        the next check is due at C{next_try}.  C{waiting(job_id, attempt,
        None, None)} moves it back to C{running}.  In the background, like
        C{waiting}; a finished or unknown job is left alone.
        """
