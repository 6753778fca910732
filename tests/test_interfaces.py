"""Every built-in extension point provides its interface (checked with verifyObject)."""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyClass, verifyObject

from rawsvc.interfaces import IActionType, IJobSink, IReplyChannel, ITrigger, ITriggerType
from rawsvc.plugins import BUILTIN_ACTIONS, BUILTIN_TRIGGERS, find_action_type, find_trigger_type


@pytest.mark.parametrize("name", sorted(BUILTIN_ACTIONS))
def test_builtin_action_types_provide_iactiontype(name):
    assert verifyObject(IActionType, find_action_type(name))


@pytest.mark.parametrize("name", sorted(BUILTIN_TRIGGERS))
def test_builtin_trigger_types_provide_itriggertype_and_build_itriggers(name):
    trigger_type = find_trigger_type(name)
    assert verifyObject(ITriggerType, trigger_type)
    assert verifyClass(ITrigger, trigger_type)


def test_the_in_memory_job_sink_provides_ijobsink():
    from rawsvc.dispatch import Dispatcher

    assert verifyObject(IJobSink, Dispatcher({}))


def test_reply_slots_provide_ireplychannel():
    from rawsvc.triggers.replies import ReplyQueue

    assert verifyObject(IReplyChannel, ReplyQueue(lambda data: None).new_slot("peer"))
