"""MQTT buttons (issue 19): Shelly, Tasmota, ESPHome and zigbee2mqtt buttons as press sources.

`payloads` reads one message (pure), `source` is the button broker's client (asyncio, aiomqtt).
"""
