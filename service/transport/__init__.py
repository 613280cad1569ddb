"""ZeroMQ sockets: creation, binding, options. No message semantics here."""
