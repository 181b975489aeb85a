"""The local single-node stack: a Kafka broker from Maven Central's jars and a PostgreSQL cluster
from the system's packages, both owned by the project and recorded by pid."""
