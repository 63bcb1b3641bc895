"""Layer 1, the shared language of every stage: the audit record, the delivery envelope, redaction, times, the wire
contract and the version. Imports nothing of keytrail but `config`."""
