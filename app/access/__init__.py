"""Who may do what: API keys and the request gate, per-key rate limits, and the audit trail."""
