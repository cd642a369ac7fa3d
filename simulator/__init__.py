"""genq's upstream simulator: a development and test tool, not a model.

It speaks the hf, tgi and openai text-generation protocols over real HTTP, on the routes
and in the shapes their official clients use (``huggingface_hub.InferenceClient``,
``text_generation.Client``, ``openai``), and answers with :func:`simulated_text`;
latency, errors, 429/503, hangs, outages, redirects and context-length refusals are
switched at run time::

    with SimulatorServer() as sim:
        sim.configure(mode="rate_limit", retry_after_s=2)
        ...  # point GENQ_UPSTREAM_URL at sim.url

Run it standalone with ``python -m simulator --port 8081``.
"""

from simulator.behaviour import ConfigError, Mode, SimulatorConfig
from simulator.server import SimulatorServer, simulated_text

__all__ = ["ConfigError", "Mode", "SimulatorConfig", "SimulatorServer", "simulated_text"]
