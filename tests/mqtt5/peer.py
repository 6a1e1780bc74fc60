"""An independent MQTT 5 client for the integration tests: Eclipse Paho's Python client
(paho-mqtt 2.x), so that what the binding sends and receives is checked by code that is not
ours. One command per run; every line it prints is one JSON object.

  subscribe --port P --topic T --count N    prints {"ready": true} once subscribed, then one
                                            line per message, and exits after N
  publish --port P --topic T --payload-b64 B [--qos Q] [--retain] [--properties JSON]
                                            publishes and prints the broker's reason code
  request --port P --topic T --response-topic R --correlation-b64 C --payload-b64 B
                                            publishes a request and prints the response
  retained --port P --topic T               prints whether T holds a retained message now
"""

import argparse
import base64
import json
import queue
import sys
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10


def emit(value):
    print(json.dumps(value), flush=True)


def fail(why):
    emit({"error": why})
    sys.exit(1)


def describe(message):
    """A received message with every property the binding may set, bytes in base64."""
    props = message.properties
    correlation = getattr(props, "CorrelationData", None)
    return {
        "topic": message.topic,
        "payload_b64": base64.b64encode(message.payload).decode(),
        "qos": message.qos,
        "retain": bool(message.retain),
        "content_type": getattr(props, "ContentType", None),
        "response_topic": getattr(props, "ResponseTopic", None),
        "correlation_b64": None if correlation is None else base64.b64encode(correlation).decode(),
        "expiry": getattr(props, "MessageExpiryInterval", None),
        "user_properties": [list(pair) for pair in getattr(props, "UserProperty", [])],
        "payload_format": getattr(props, "PayloadFormatIndicator", None),
    }


class Peer:
    """A connected client whose callbacks feed one queue of (kind, value) events."""

    def __init__(self, port):
        self.events = queue.Queue()
        # Messages that came while waiting for something else, oldest first.
        self.early = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"peer-{uuid.uuid4()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = lambda c, u, flags, code, props: self.events.put(("connack", code))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.events.put(("suback", codes))
        self.client.on_message = lambda c, u, message: self.events.put(("message", message))
        self.client.on_publish = lambda c, u, mid, code, props: self.events.put(("puback", (mid, code)))
        self.client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
        self.client.loop_start()
        code = self.expect("connack")
        if code.is_failure:
            fail(f"CONNACK {code}")

    def expect(self, kind):
        while True:
            try:
                got, value = self.events.get(timeout=WAIT)
            except queue.Empty:
                fail(f"no {kind} within {WAIT} s")
            if got == kind:
                return value
            if got == "message":
                self.early.append(value)

    def subscribe(self, *topics):
        self.client.subscribe([(topic, 1) for topic in topics])
        codes = self.expect("suback")
        if any(code.is_failure for code in codes):
            fail(f"SUBACK {[str(code) for code in codes]}")

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            return 0
        while True:
            mid, code = self.expect("puback")
            if mid == info.mid:
                return code.value

    def next_message(self):
        if self.early:
            return self.early.pop(0)
        return self.expect("message")


def properties_from(text):
    """Publish properties from JSON: content_type, response_topic, correlation_b64, expiry,
    user_properties ([[name, value], ...])."""
    given = json.loads(text or "{}")
    props = Properties(PacketTypes.PUBLISH)
    if "content_type" in given:
        props.ContentType = given["content_type"]
    if "response_topic" in given:
        props.ResponseTopic = given["response_topic"]
    if "correlation_b64" in given:
        props.CorrelationData = base64.b64decode(given["correlation_b64"])
    if "expiry" in given:
        props.MessageExpiryInterval = given["expiry"]
    if "user_properties" in given:
        props.UserProperty = [tuple(pair) for pair in given["user_properties"]]
    return props


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["subscribe", "publish", "request", "retained"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--payload-b64", default="")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--retain", action="store_true")
    parser.add_argument("--properties")
    parser.add_argument("--response-topic")
    parser.add_argument("--correlation-b64")
    args = parser.parse_args()
    peer = Peer(args.port)
    payload = base64.b64decode(args.payload_b64)

    if args.command == "subscribe":
        peer.subscribe(args.topic)
        emit({"ready": True})
        for _ in range(args.count):
            emit(describe(peer.next_message()))
    elif args.command == "publish":
        code = peer.publish(args.topic, payload, args.qos, args.retain, properties_from(args.properties))
        emit({"reason_code": code})
    elif args.command == "request":
        peer.subscribe(args.response_topic)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = args.response_topic
        props.CorrelationData = base64.b64decode(args.correlation_b64)
        peer.publish(args.topic, payload, 1, False, props)
        emit(describe(peer.next_message()))
    elif args.command == "retained":
        # Retained messages are queued to a subscriber when its SUBSCRIBE is handled, so a
        # marker published after the SUBACK arrives after any of them.
        marker = f"marker/{uuid.uuid4()}"
        peer.subscribe(args.topic, marker)
        peer.publish(marker, b"", 1)
        retained = None
        while True:
            message = peer.next_message()
            if message.topic == marker:
                break
            if message.topic == args.topic:
                retained = describe(message)
        emit({"retained": retained})
    peer.client.disconnect()
    peer.client.loop_stop()


if __name__ == "__main__":
    main()
