"""Cumulocity: SmartREST codec, MQTT uplink, REST identity look-up, the EST client (est.py)."""
