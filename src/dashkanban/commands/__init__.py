"""Commands: one module per `dashkanban` sub-command (`run` is the daemon). Each takes its
typed options, builds what it needs through `compose`, and returns an exit code; cli.py parses
the command line and calls them. Feature packages keep their own commands (kanban/cli.py,
sandbox/cli.py, mqtt_buttons/discover.py). What a command uses but is not one lives below: the
EST client behind `register --certificate/--renew` is c8y/est.py.
"""
