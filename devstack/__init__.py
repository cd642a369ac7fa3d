"""The local stack: obtain a redis-server, run every genq process under honcho, demo it."""
