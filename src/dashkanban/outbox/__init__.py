"""Outbox: the durable queue between a press and Cumulocity. `store` is the SQLite queue of
events still owed, `writer` the one thread that writes to it, and `courier` delivers its rows
over the MQTT uplink in order, removing each once Cumulocity has acknowledged it.
"""
