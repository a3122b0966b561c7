"""Pub/Sub on the official client: publishing, and creating topics and push
subscriptions from the manifest for the local stack.

The client honours PUBSUB_EMULATOR_HOST by itself, so the same code reaches the
emulator locally and the service in the cloud.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import DependencyError

if TYPE_CHECKING:
    from threatflow.platform.manifest import Subscription

PUBLISH_TIMEOUT_SECONDS = 30.0


class PubSubPublisher:
    def __init__(self, project: str) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self._project = project
        # Publish immediately: functions publish a few messages per request and
        # must not wait for a batch to fill.
        self._client = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.01))

    def topic_path(self, topic: str) -> str:
        return self._client.topic_path(self._project, topic)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        from google.api_core import exceptions

        try:
            future = self._client.publish(self.topic_path(topic), data, **dict(attributes or {}))
            return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))
        except (exceptions.GoogleAPICallError, TimeoutError) as exc:
            raise DependencyError(f"Pub/Sub publish to {topic!r} failed: {exc}") from exc

    def publish_many(self, topic: str, messages: list[tuple[bytes, Mapping[str, str]]]) -> list[str]:
        """Publish all at once (the client batches them) and wait for every message id."""
        from google.api_core import exceptions

        try:
            path = self.topic_path(topic)
            futures = [self._client.publish(path, data, **dict(attributes)) for data, attributes in messages]
            return [str(f.result(timeout=PUBLISH_TIMEOUT_SECONDS)) for f in futures]
        except (exceptions.GoogleAPICallError, TimeoutError) as exc:
            raise DependencyError(f"Pub/Sub publish to {topic!r} failed: {exc}") from exc

    def ping(self) -> None:
        from google.api_core import exceptions

        try:
            next(iter(self._client.list_topics(request={"project": f"projects/{self._project}", "page_size": 1}, timeout=3)), None)
        except (exceptions.GoogleAPICallError, exceptions.RetryError) as exc:
            raise DependencyError(f"Pub/Sub is unreachable: {exc.__class__.__name__}") from exc


class PubSubAdmin:
    """Creates the manifest's topics and subscriptions; used by the local stack."""

    def __init__(self, project: str) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self._project = project
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()

    def ensure_topic(self, topic: str) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.AlreadyExists):
            self.publisher.create_topic(name=self.publisher.topic_path(self._project, topic))

    def ensure_subscription(self, sub: Subscription, *, push_endpoint: str | None) -> None:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]
        from google.protobuf import duration_pb2

        request: dict[str, Any] = {
            "name": self.subscriber.subscription_path(self._project, sub.name),
            "topic": self.publisher.topic_path(self._project, sub.topic),
            "ack_deadline_seconds": sub.ack_deadline_seconds,
        }
        if push_endpoint:
            request["push_config"] = pubsub_v1.types.PushConfig(push_endpoint=push_endpoint)
        if sub.filter:
            request["filter"] = sub.filter
        if sub.dead_letter_topic:
            request["dead_letter_policy"] = pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=self.publisher.topic_path(self._project, sub.dead_letter_topic),
                max_delivery_attempts=sub.max_delivery_attempts or 5,
            )
        if sub.retry:
            request["retry_policy"] = pubsub_v1.types.RetryPolicy(
                minimum_backoff=duration_pb2.Duration(seconds=sub.retry.minimum_backoff_seconds),
                maximum_backoff=duration_pb2.Duration(seconds=sub.retry.maximum_backoff_seconds),
            )
        if sub.message_retention_seconds:
            request["message_retention_duration"] = duration_pb2.Duration(seconds=sub.message_retention_seconds)
        try:
            self.subscriber.create_subscription(request=request)
        except exceptions.AlreadyExists:
            # A restarted stack may have a new port: repoint the push endpoint.
            if push_endpoint:
                self.subscriber.modify_push_config(request={"subscription": request["name"], "push_config": request["push_config"]})

    def close(self) -> None:
        self.subscriber.close()


class PubSubPuller:
    """Synchronous pull from a subscription (the dead-letter admin view drains its hold subscriptions)."""

    def __init__(self, project: str) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self._project = project
        self._client = pubsub_v1.SubscriberClient()

    def pull(self, subscription: str, *, max_messages: int = 100, timeout: float = 5.0, wait: bool = False) -> list[dict[str, Any]]:
        """What the subscription holds now, up to `max_messages`. Without `wait` an empty subscription
        answers at once (`return_immediately`) instead of holding the call until a message comes or the
        deadline passes (about 1 s a subscription on the emulator, up to `timeout` on the service): the
        dead-letter view drains several hold subscriptions per request. Google discourages it for
        throughput, which a drain does not need; a message it misses is taken by the next drain."""
        from google.api_core import exceptions

        path = self._client.subscription_path(self._project, subscription)
        request = {"subscription": path, "max_messages": max_messages, "return_immediately": not wait}
        try:
            response = self._client.pull(request=request, timeout=timeout)
        except exceptions.NotFound:
            return []
        except exceptions.DeadlineExceeded:
            return []
        except exceptions.GoogleAPICallError as exc:
            raise DependencyError(f"Pub/Sub pull from {subscription!r} failed: {exc}") from exc
        out = []
        for received in response.received_messages:
            message = received.message
            out.append(
                {
                    "ack_id": received.ack_id,
                    "message_id": message.message_id,
                    "data": bytes(message.data),
                    "attributes": dict(message.attributes),
                    "published_at": message.publish_time.isoformat() if message.publish_time else None,
                }
            )
        return out

    def ack(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            self._client.acknowledge(
                request={"subscription": self._client.subscription_path(self._project, subscription), "ack_ids": ack_ids}
            )

    def close(self) -> None:
        self._client.close()
