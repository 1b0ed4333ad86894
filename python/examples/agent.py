"""An agent that reports its health: the original agent's loop, with the one
import changed. Run a server (`cargo run --release -p fleet-health-server`),
then:

    FLEET_HEALTH_AGENT_ID=example-1 python python/examples/agent.py
    fleet-health status example-1
"""

import logging
import time

from fleet_health import HealthSensor  # was: from health_sensor import HealthSensor

logging.basicConfig(level=logging.INFO)


def main() -> None:
    with HealthSensor(labels={"role": "example"}) as sensor:  # FLEET_HEALTH_* settings apply
        sensor.starting(time.time())
        sensor.registered()
        for _ in range(5):
            sensor.server_data_sent(time.time())  # the agent talks to its data server...
            sensor.server_data_received(time.time())
            print("local status:", sensor.status(time.time()))  # ...and its watchdog asks
            time.sleep(1)
        sensor.shutting_down(time.time())
        sensor.stopped()  # says `stopped` and flushes what is not yet acknowledged


if __name__ == "__main__":
    main()
