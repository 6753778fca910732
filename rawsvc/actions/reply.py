"""
Action C{reply}: write templated C{data} back on the socket the job came
from, while the sender keeps it open or has only half-closed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext


@provider(IActionType)
@implementer(IAction)
class ReplyAction:
    """Reply to the sender of the job."""

    type_name = "reply"
    options = o.Schema(
        o.Option("data", str, "OK ${job_id}\r\n", o.template, doc="what to write back to the sender (template)"),
        o.Option("encoding", str, "utf-8", o.encoding, doc="encoding of the rendered reply"),
    )

    def __init__(self, data: Template, encoding: str = "utf-8") -> None:
        self.data = data
        self.encoding = encoding

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "ReplyAction":
        return cls(options["data"], options["encoding"])

    def run(self, job):
        channel = job.reply_channel
        if channel is None:
            raise ActionError(
                f"cannot reply: job {job.job_id} from trigger {job.trigger!r} has no "
                "connection to answer (resumed from the spool, or a trigger without replies)"
            )
        # The channel's own result (a Deferred, or a plain value): the flow
        # takes either, and catches what it raises.
        return channel.reply(self.data.render(job.variables, self.encoding))
