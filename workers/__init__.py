"""RQ jobs and what they use: normalize raw events, append them to the audit store, fan out deliveries."""
