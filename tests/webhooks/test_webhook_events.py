"""Typed events: every object type, the Metric enum, unknown metrics, fields and object types kept."""

from __future__ import annotations

import json

import pytest
from webhook_helpers import SECRET, signed

from ciotrack.webhooks import (
    CustomerEvent,
    EmailEvent,
    Event,
    GenericEvent,
    InAppEvent,
    Metric,
    PushEvent,
    SlackEvent,
    SmsEvent,
    WebhookActionEvent,
    WhatsappEvent,
    event_from_dict,
    verify,
)
from ciotrack.webhooks.samples import METRICS_BY_TYPE, event_payload

NOW = 1_700_000_000

EXPECTED = {"customer": CustomerEvent, "email": EmailEvent, "push": PushEvent, "in_app": InAppEvent,
            "sms": SmsEvent, "slack": SlackEvent, "webhook": WebhookActionEvent, "whatsapp": WhatsappEvent}


@pytest.mark.parametrize("object_type", sorted(EXPECTED))
def test_every_object_type_has_its_class_and_every_documented_metric_its_enum(object_type: str) -> None:
    for metric in METRICS_BY_TYPE[object_type]:
        body, headers = signed(event_payload(object_type, metric, timestamp=NOW, customer_id="c-9"), timestamp=NOW)
        event = verify(body, headers, SECRET, now=NOW)
        assert type(event) is EXPECTED[object_type]
        assert event.object_type == object_type
        assert isinstance(event.metric, Metric) and event.metric == metric and str(event.metric) == metric
        assert event.timestamp == NOW and event.at.timestamp() == NOW
        assert event.customer_id == "c-9"
        assert event.to_dict() == json.loads(body)


def test_the_ids_of_a_campaign_message_and_the_metric_specific_fields() -> None:
    payload = {"event_id": "01E4C4C6P79C12J5A6KPE6XNFD", "object_type": "email", "metric": "clicked",
               "timestamp": 1613063089,
               "data": {"action_id": 96, "campaign_id": 23, "customer_id": "user-123",
                        "delivery_id": "RPILAgABcRhIBqSp",
                        "identifiers": {"id": "user-123", "email": "a@example.com", "cio_id": "d9c106000001"},
                        "journey_id": "01E4C4C6P", "parent_action_id": 95, "trigger_event_id": "01E4C4", "recipient":
                        "a@example.com", "subject": "Hi", "href": "https://example.com/x", "link_id": 7,
                        "content": "<p>hi</p>"}}
    event = event_from_dict(payload)
    assert isinstance(event, EmailEvent) and event.metric is Metric.CLICKED
    assert (event.campaign_id, event.action_id, event.journey_id, event.parent_action_id, event.trigger_event_id) == (
        "23", "96", "01E4C4C6P", "95", "01E4C4")
    assert (event.delivery_id, event.recipient, event.subject, event.href, event.link_id, event.content) == (
        "RPILAgABcRhIBqSp", "a@example.com", "Hi", "https://example.com/x", "7", "<p>hi</p>")
    assert event.email_address == "a@example.com" and event.identifiers["cio_id"] == "d9c106000001"
    assert event.broadcast_id is None and event.newsletter_id is None and event.transactional_message_id is None
    assert event.failure_message is None
    # The repr names ids, never the address or the content.
    assert "a@example.com" not in repr(event) and "<p>hi</p>" not in repr(event)

    other = event_from_dict({"event_id": "x", "object_type": "sms", "metric": "bounced", "timestamp": 1,
                             "data": {"broadcast_id": 4, "trigger_id": 5, "newsletter_id": 6, "content_id": 8,
                                      "transactional_message_id": 9, "failure_message": "no route"}})
    assert (other.broadcast_id, other.trigger_id, other.newsletter_id, other.content_id,
            other.transactional_message_id) == ("4", "5", "6", "8", "9")
    assert isinstance(other, SmsEvent) and other.failure_message == "no route"
    push = event_from_dict(event_payload("push", "delivered", customer_id="p1"))
    assert isinstance(push, PushEvent) and push.recipients[0]["device_id"] == "device-p1"


def test_an_unknown_metric_stays_a_string() -> None:
    body, headers = signed(event_payload("email", "teleported", timestamp=NOW), timestamp=NOW)
    event = verify(body, headers, SECRET, now=NOW)
    assert event.metric == "teleported" and not isinstance(event.metric, Metric) and type(event.metric) is str


def test_unknown_object_types_fields_and_top_level_keys_are_kept() -> None:
    payload = {"event_id": "e1", "object_type": "carrier_pigeon", "metric": "delivered", "timestamp": NOW,
               "data": {"customer_id": "9", "wing_span": 31, "recipient": "roof"}, "api_version": "beta"}
    body, headers = signed(payload, timestamp=NOW)
    event = verify(body, headers, SECRET, now=NOW)
    assert type(event) is GenericEvent and isinstance(event, Event)
    assert event.object_type == "carrier_pigeon" and event.metric is Metric.DELIVERED
    assert event.data["wing_span"] == 31 and event.recipient == "roof"
    assert event.extra == {"api_version": "beta"}
    assert event.to_dict() == payload
    email = event_from_dict({**event_payload("email", "sent"), "new_top": [1]})
    assert email.extra == {"new_top": [1]}


def test_lenient_about_everything_but_the_event_id() -> None:
    event = event_from_dict({"event_id": "only"})
    assert type(event) is GenericEvent and event.metric == "" and event.timestamp == 0 and event.data == {}
    assert event_from_dict({"event_id": "s", "timestamp": "1700000000", "data": None}).timestamp == NOW
    assert event_from_dict({"event_id": "s", "object_type": 5}).object_type == ""
    for bad in ({}, {"event_id": ""}, {"event_id": None}, {"event_id": 12}):
        with pytest.raises(ValueError):
            event_from_dict(bad)


def test_customer_subscription_events() -> None:
    event = event_from_dict({"event_id": "c1", "object_type": "customer",
                             "metric": "cio_subscription_preferences_changed", "timestamp": NOW,
                             "data": {"customer_id": "", "email_address": "b@example.com",
                                      "identifiers": {"email": "b@example.com"}, "content": '{"topics":{}}'}})
    assert isinstance(event, CustomerEvent) and event.metric is Metric.SUBSCRIPTION_PREFERENCES_CHANGED
    assert event.customer_id is None  # blank: the person was deleted
    assert event.email_address == "b@example.com" and event.content == '{"topics":{}}'


def test_events_compare_by_value() -> None:
    payload = event_payload("slack", "sent", event_id="same", timestamp=NOW)
    assert event_from_dict(payload) == event_from_dict(json.loads(json.dumps(payload)))
    assert event_from_dict(payload) != event_from_dict({**payload, "metric": "failed"})
