"""Detect: the pure core of the pipeline. Frames in, presses out: `decode` reads a packet as a
sighting of a device (ARP, DHCP, NDP), `buttons` knows which MACs are buttons, `presses`
debounces sightings into presses, `events` turns a press into the Cumulocity event, and
`pipeline` wires these together. No I/O here: capture feeds it, the outbox takes its events.
"""
