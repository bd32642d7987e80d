"""Cumulocity: SmartREST codec, MQTT uplink, REST identity look-up."""
