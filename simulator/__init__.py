"""genq's upstream simulator: a development and test tool, not a model.

It speaks the hf, tgi and openai text-generation protocols over real HTTP and answers
with :func:`simulated_text`; latency, errors, 429/503, hangs and outages are switched at
run time::

    with SimulatorServer() as sim:
        sim.configure(mode="rate_limit", retry_after_s=2)
        ...  # point GENQ_UPSTREAM_URL at sim.url

Run it standalone with ``python -m simulator --port 8081``.
"""

from simulator.behaviour import ConfigError, Mode, SimulatorConfig
from simulator.server import SimulatorServer, simulated_text

__all__ = ["ConfigError", "Mode", "SimulatorConfig", "SimulatorServer", "simulated_text"]
