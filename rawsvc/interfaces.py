"""
Every extension point of rawsvc, as zope.interface interfaces.

Plugins implement these; the service only talks to them through these
interfaces, and the tests check the built-ins with ``verifyObject``.
"""

from zope.interface import Attribute, Interface


class IAction(Interface):
    """
    One step of a flow: takes a job, returns a Deferred.
    """

    type_name = Attribute("The action's type, as written in the config.")

    def run(job):
        """
        Do the work for C{job} (a L{rawsvc.job.Job}).

        May set variables in C{job.variables}.  Returns a Deferred (or a plain
        value) that fails with L{rawsvc.errors.ActionError} carrying a message
        for people when the action fails.
        """


class IActionType(Interface):
    """
    Provided by an action class (or any factory): how the config builds it.
    """

    type_name = Attribute("The type name used in the config.")
    options = Attribute(
        "A L{rawsvc.options.Schema} describing the accepted keys."
    )

    def from_config(options, context):
        """
        Build an L{IAction} from validated C{options} (a dict) and a
        L{rawsvc.context.BuildContext}.
        """


class ITriggerType(Interface):
    """
    Provided by a trigger class: how the config builds a trigger.
    """

    type_name = Attribute("The type name used in the config.")
    options = Attribute("A L{rawsvc.options.Schema} of the trigger's keys.")

    def from_config(options, context):
        """
        Build an L{ITrigger} from validated C{options} and a build context.
        """


class ITrigger(Interface):
    """
    A listener that turns incoming connections or datagrams into jobs.

    A trigger is also an C{IService}: the service tree starts and stops it.
    """

    name = Attribute("The trigger's name from the config.")
    counters = Attribute("A L{rawsvc.metrics.TriggerCounters}.")
    listening = Attribute("True while the listener is up.")

    def pause():
        """Stop accepting new connections or jobs."""

    def resume():
        """Accept again after L{pause}."""

    def status():
        """A JSON-able dict describing the trigger's state and counters."""


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


class IJobSink(Interface):
    """
    Where triggers hand their jobs: runs the job's flow (and, with a spool,
    stores the job durably first).
    """

    def submit(job, flow_name):
        """
        Accept C{job} for C{flow_name}.  Returns a Deferred firing with the
        finished job; it does not fail for a failing flow.  The job's
        C{state} is C{"done"} or C{"failed"} after its flow ran, or
        C{"refused"} (with C{job.error} saying why) when the sink could not
        take it (a durable spool that cannot store it): the flow did not run
        and the trigger tells the sender.
        """


# --- client slice: what the destination pool tells about deliveries -----------


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
