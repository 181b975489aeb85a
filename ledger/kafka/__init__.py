"""Everything the ledger's processes share about Kafka, below all of them (issue 17): the topics
and their partition markers (`topics`, `markers`), which partition a key goes to
(`partitioning`), every client's settings (`settings`), the consumer groups and the names made
from them (`groups`), the read-to-the-end-then-follow loop (`follow`) and the reference data
reader (`reference`). It imports only the pure core, the schemas and the client libraries; the
worker, the projection writer, the APIs, the stack and the CLI import it."""
