"""`skipcache produce` on a real broker: lines checked against the contract, sent as written,
keyed by user onto the partition the worker expects; bad lines counted by reason, not sent."""
import uuid

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.cli import main
from stream.cli.services import create_topics
from stream.kafka_io import partition_of
from stream.kafka_io import SLOW_STEP_SECONDS, client_config
from stream.producer import make_producer

pytestmark = pytest.mark.integration
TRACK = "m92ShLjHYUKj2mUeydGsdp"


def _read(bootstrap: str, topic: str, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out = [(m.partition, m.key, m.value) for m in consumer]
    consumer.close()
    return out


@pytest.mark.parametrize("key", ["user", "none"])
def test_produce_checks_keys_and_sends_lines(servers, tmp_path, key):
    bootstrap = f"127.0.0.1:{servers[0].port}"
    topic = f"produce-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 3})
    good = [orjson.dumps({"session_id": 10 + u, "timestamp": f"2023-06-17T10:0{i}:50.547000", "user_id": u,
                          "track_id": TRACK, "event_type": "play", **({"next_track_id": TRACK} if i % 2 else {})})
            for u in range(12) for i in range(3)]
    bad = [b"{not json", orjson.dumps({"session_id": 1, "timestamp": "2023-02-30T10:00:00", "user_id": 1,
                                       "track_id": TRACK, "event_type": "play"}),
           orjson.dumps({"session_id": 1, "timestamp": "2023-06-17T10:00:00", "user_id": "1", "event_type": "ad"}),
           orjson.dumps({"session_id": 1, "timestamp": "2023-06-17T10:00:00", "user_id": 1, "event_type": "play"})]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(good[:5] + bad[:2] + good[5:] + bad[2:]) + b"\n\n")
    assert main(["produce", str(path), "--bootstrap", bootstrap, "--topic", topic, "--key", key,
                 "--json", str(tmp_path / "s.json")]) == 0
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["sent"] == len(good)
    assert summary["plays_without_upcoming"] == 12 * 2
    assert {r: v["count"] for r, v in summary["rejected"].items()} == {
        "bad_json": 1, "bad_timestamp": 1, "bad_user_id": 1, "missing_track_id": 1}
    records = _read(bootstrap, topic, 3)
    assert sorted(v for _, _, v in records) == sorted(good)  # each once, as written
    if key == "user":
        for p, k, v in records:
            user = orjson.loads(v)["user_id"]
            assert k == str(user).encode() and p == partition_of(user, 3)
    else:
        assert all(k is None for _, k, _ in records)


def test_the_producer_does_not_call_a_busy_loop_a_blocked_one(servers):
    producer = make_producer(f"127.0.0.1:{servers[0].port}")
    try:
        net = getattr(producer._sender._client, "_net", None)
        if net is not None:  # kafka-python 3: its slow-step check, set to what blocking means here
            assert net.config["slow_task_threshold_secs"] == SLOW_STEP_SECONDS
    finally:
        producer.close()


def test_the_admin_client_topics_are_made_with_has_the_same_threshold(servers):
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{servers[0].port}", **client_config())
    try:
        net = getattr(admin._client, "_net", None)
        if net is not None:
            assert net.config["slow_task_threshold_secs"] == SLOW_STEP_SECONDS
    finally:
        admin.close()
