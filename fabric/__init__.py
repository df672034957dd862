"""The library every node shares: messages, codec, books, instruments, client."""
