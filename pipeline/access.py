"""Who may use this host's Kafka from elsewhere: the worker user's SCRAM credential and its ACLs.

A host that serves workers (deploy/install.sh --listen ADDRESS) gives them one Kafka user. It may
read and write the orders topic, write and read the dead-letter topic, and join the pipeline's
consumer groups (the group itself and `{group}-*`, which audit and dlq replay use), and nothing else:
no topic creation, no other topic, no cluster configuration. The grant runs on the Kafka host over
the loopback listener, whose clients the broker trusts (super user ANONYMOUS); it is idempotent.
"""

from __future__ import annotations

# The admin package re-exports these without __all__, which mypy --strict takes as private.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from pipeline.settings import Settings

SCRAM_ITERATIONS = 8192


def worker_acls(settings: Settings, user: str) -> list[AclBinding]:
    """The worker user's ACLs: exactly what producer, consumers, status, audit and dlq tools need."""
    principal = f"User:{user}"

    def allow(kind: ResourceType, name: str, pattern: ResourcePatternType, op: AclOperation) -> AclBinding:
        return AclBinding(kind, name, pattern, principal, "*", op, AclPermissionType.ALLOW)

    bindings = [allow(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, op)
                for name in (settings.kafka_topic, settings.kafka_dlq_topic)
                for op in (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)]
    bindings.append(allow(ResourceType.GROUP, settings.consumer_group_id, ResourcePatternType.PREFIXED,
                          AclOperation.READ))
    return bindings


def grant_worker(settings: Settings, user: str, password: str, timeout: float = 30.0) -> list[str]:
    """Create or update `user`'s SCRAM-SHA-512 credential and its ACLs; returns what was done."""
    admin = AdminClient({**settings.kafka_common(), "client.id": f"{settings.client_id()}-access"})
    credential = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), password.encode())
    for future in admin.alter_user_scram_credentials([credential], request_timeout=timeout).values():
        future.result()
    acls = worker_acls(settings, user)
    for future in admin.create_acls(acls, request_timeout=timeout).values():
        future.result()
    return [f"kafka user {user}: SCRAM-SHA-512 credential set",
            f"kafka user {user}: {len(acls)} ACLs (topics {settings.kafka_topic}, {settings.kafka_dlq_topic}; "
            f"groups {settings.consumer_group_id}*)"]
