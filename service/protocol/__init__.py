"""Wire protocol v1: message schemas and pure encode/decode functions (no sockets here)."""
