"""Private local servers (ZooKeeper, Kafka, PostgreSQL) for a local run and for tests."""

from pipeline.services.process import ManagedProcess, ServiceError, free_port
from pipeline.services.servers import LocalServices, ServicesConfig

__all__ = ["LocalServices", "ManagedProcess", "ServiceError", "ServicesConfig", "free_port"]
