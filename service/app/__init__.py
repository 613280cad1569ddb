"""Application layer: configuration, the server that wires sockets to the pipeline, the CLI."""
